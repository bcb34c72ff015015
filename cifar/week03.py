"""Week 3: MLP vs plain CNN vs ResNet on CIFAR-10, each with and without augmentation, at one time budget.

    make week03                                              # = python cifar/week03.py --out results/week03
    python cifar/week03.py --out /tmp/w3 --budget-s 10       # a quick smoke run

Each model first runs a short probe to measure its ms/step on this machine; then each (model,
augmentation) arm trains for `--budget-s` seconds of training-loop time (`train.time_limit_s`) with
an LR schedule sized to end at about that time (`train.schedule_steps`), so every model gets the
same wall-clock budget and a complete schedule. The embedded 2,500-image sample is the default;
`--data-dir` pointing at the full set (with `--val-size 5000`) uses all 50,000/10,000 images.
Writes OUT/metrics.csv, OUT/runs.csv, OUT/plots/*.png and OUT/notes.md.
"""

import argparse
import csv
import json
from pathlib import Path

from cifar import train as cifar_train
from cifar.model import forward_flops_per_image
from common.errors import UserError, run_cli
from common.report import machine_description, report_dir, markdown_table, merge_metrics
from common.run import read_metrics

CONFIGS = {"mlp": "cifar/configs/mlp.yaml", "cnn": "cifar/configs/cnn.yaml", "resnet": "cifar/configs/resnet.yaml"}
# Share of the budget left for validation passes, checkpoints and speed variation when sizing the
# schedule. With 0.1, a busy machine cut several arms before their LR had decayed.
EVAL_SHARE = 0.2


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="cifar/week03.py", description="CIFAR-10 models and augmentation at one time budget.")
    parser.add_argument("--out", default="results/week03", help="report folder; must not exist yet")
    parser.add_argument("--budget-s", type=float, default=60.0, help="seconds of training loop per arm")
    parser.add_argument("--models", default="mlp,cnn,resnet", help="comma-separated models: mlp, cnn, resnet")
    parser.add_argument("--seed", type=int, default=0, help="run seed of every arm")
    parser.add_argument("--data-dir", default="data/cifar10", help="folder with the CIFAR-10 binary files")
    parser.add_argument("--val-size", type=int, default=250, help="training images held out for validation")
    args = parser.parse_args(argv)
    args.models = args.models.split(",")
    unknown = [m for m in args.models if m not in CONFIGS]
    if unknown:
        raise UserError(f"--models has unknown model {unknown[0]!r}; valid models: {', '.join(CONFIGS)}")
    if args.budget_s <= 0:
        raise UserError(f"--budget-s is {args.budget_s}, must be positive")
    return args


def common_args(args, out: Path, model: str) -> list[str]:
    return ["--config", CONFIGS[model], f"--run.seed={args.seed}", f"--data.dir={args.data_dir}",
            f"--data.val_size={args.val_size}", "--system.num_workers=0"]


def probe_ms_per_step(args, out: Path, model: str) -> float:
    """Time 30 steps of the model (the first 10 are warm-up) and return the median ms/step."""
    result = cifar_train.main([*common_args(args, out, model), f"--run.name=probe_{model}",
                               f"--run.results_dir={out / 'probes'}", "--train.max_steps=30", "--train.log_every=10"])
    rows = [r for r in read_metrics(result["run_dir"] / "metrics.csv") if r["split"] == "train"]
    timed = sorted(float(r["ms_per_step"]) for r in rows[1:])
    return timed[len(timed) // 2]


def plot(records: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, rec in enumerate(records):
        rows = [r for r in read_metrics(Path(rec["run_dir"]) / "metrics.csv") if r["split"] == "val"]
        style = "-" if rec["augment"] else "--"
        ax.plot([float(r["elapsed_s"]) for r in rows], [100 * float(r["acc"]) for r in rows], style,
                color=f"C{list(CONFIGS).index(rec['model'])}", label=f"{rec['model']}, aug {'on' if rec['augment'] else 'off'}")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("CIFAR-10: validation accuracy within the time budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "plots" / "val_acc_vs_time.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    names = [f"{r['model']}\naug {'on' if r['augment'] else 'off'}" for r in records]
    ax.bar(names, [100 * r["test_acc"] for r in records],
           color=[f"C{list(CONFIGS).index(r['model'])}" for r in records],
           alpha=1.0)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy of the best-validation checkpoint")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "plots" / "test_acc.png", dpi=100)
    plt.close(fig)


def write_notes(records: list[dict], args, out: Path, data_sizes: dict) -> None:
    table = markdown_table(
        ["model", "augmentation", "params", "MFLOP/image fwd", "steps (scheduled)", "train time (s)", "best val acc", "test acc"],
        [[r["model"], "on" if r["augment"] else "off", f"{r['params']:,}", f"{r['mflops']:.1f}",
          f"{r['steps']} ({r['scheduled']})", f"{r['train_time_s']:.1f}", f"{100 * r['best_val_acc']:.2f}%",
          f"{100 * r['test_acc']:.2f}%"] for r in records],
    )
    best = max(records, key=lambda r: r["best_val_acc"])
    standard_error = (best["test_acc"] * (1 - best["test_acc"]) / data_sizes["test"]) ** 0.5
    lines = []
    for model in args.models:
        on = next(r for r in records if r["model"] == model and r["augment"])
        off = next(r for r in records if r["model"] == model and not r["augment"])
        delta = 100 * (on["test_acc"] - off["test_acc"])
        lines.append(f"- **{model}**: augmentation changes test accuracy by {delta:+.2f} pp "
                     f"({100 * off['test_acc']:.2f}% to {100 * on['test_acc']:.2f}%).")
    notes = f"""# Week 3: CIFAR-10 models and augmentation at one time budget

## Hypothesis

On {data_sizes['train']:,} training images, inductive bias matters more than parameter count:
the CNN and the ResNet should beat the MLP by a wide margin in the same time, and augmentation
should help the convolutional models, which otherwise memorise a small training set, while doing
little for the MLP, which underfits.

## Method

- Data: `{args.data_dir}`, {data_sizes['train']:,} train / {data_sizes['val']:,} validation /
  {data_sizes['test']:,} test images.
- Models and configs: {', '.join(f'{m} (`{CONFIGS[m]}`)' for m in args.models)}; augmentation is a
  random 32x32 crop of the image padded by 4 pixels, then a random horizontal flip.
- Budget: {args.budget_s:g} s of training-loop time per arm (validation passes included), with
  the LR schedule sized from a 30-step speed probe to end at about that time. One seed ({args.seed}).
- The test accuracy is that of the best-validation checkpoint.
- Machine: {machine_description()}.

## Result

{table}

![validation accuracy over time](plots/val_acc_vs_time.png)
![test accuracy](plots/test_acc.png)

## Interpretation

- The best arm on validation is **{best['model']} with augmentation {'on' if best['augment'] else 'off'}**
  ({100 * best['best_val_acc']:.2f}% val, {100 * best['test_acc']:.2f}% test).
{chr(10).join(lines)}
- One seed per arm. On {data_sizes['test']:,} test images the binomial standard error of the best
  arm's accuracy is {100 * standard_error:.1f} pp, and seed-to-seed variation adds to it, so gaps of a
  few points are not conclusive; week 6 repeats such comparisons over seeds with confidence intervals.

## Next step

Repeat the best two arms over several seeds with `cifar/ablate.py`, and run
`cifar/configs/speedrun.yaml` on the full dataset with a GPU.
"""
    (out / "notes.md").write_text(notes)


def main(argv) -> None:
    args = parse_args(argv)
    with report_dir(args.out) as out:
        records = []
        data_sizes = {}
        for model in args.models:
            ms_per_step = probe_ms_per_step(args, out, model)
            scheduled = max(1, int(args.budget_s * (1 - EVAL_SHARE) * 1000 / ms_per_step))
            for augment in (True, False):
                print(f"=== week03 arm {len(records) + 1}/{2 * len(args.models)}: {model}, augmentation "
                      f"{'on' if augment else 'off'}, {scheduled} scheduled steps at {ms_per_step:.0f} ms/step", flush=True)
                result = cifar_train.main([
                    *common_args(args, out, model), f"--run.name={model}_aug{'on' if augment else 'off'}",
                    f"--run.results_dir={out / 'runs'}", f"--data.augment={str(augment).lower()}",
                    f"--train.schedule_steps={scheduled}", f"--train.time_limit_s={args.budget_s}",
                ])
                summary = result["summary"]
                records.append({
                    "model": model, "augment": augment, "params": summary["params"],
                    "mflops": forward_flops_per_image(result["model"]) / 1e6, "steps": summary["steps"], "scheduled": scheduled,
                    "train_time_s": summary["train_time_s"], "best_val_acc": summary["best_val_acc"],
                    "test_acc": summary["test_acc"], "run_dir": str(result["run_dir"]),
                })
                data_sizes = {"train": summary["train_examples"], "val": summary["val_examples"], "test": summary["test_examples"]}
        merge_metrics([({"model": r["model"], "augment": r["augment"]}, Path(r["run_dir"]) / "metrics.csv")
                       for r in records], out / "metrics.csv")
        with open(out / "runs.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0].keys()))
            writer.writeheader()
            writer.writerows(records)
        plot(records, out)
        write_notes(records, args, out, data_sizes)
        (out / "arms.json").write_text(json.dumps(records, indent=2) + "\n")
        print(f"week03 report: {out / 'notes.md'}")


if __name__ == "__main__":
    run_cli(main)
