"""Week 1: a learning-rate sweep for softmax regression and the CNN, with seeds, plots and notes.

    make week01                                                   # = python mnist/week01.py --out results/week01
    python mnist/week01.py --out /tmp/w1 --lrs 1e-3,1e-2 --seeds 0 --max-steps 50    # a quick smoke run

Every (model, learning rate, seed) trains for the same budget with mnist/train.py (in this process)
and keeps its own run directory under OUT/runs/. Rates are compared on the validation split; the
test accuracy of each rate is reported next to it but never used to choose. Writes OUT/metrics.csv
(all rows of all runs), OUT/runs.csv (one row per run), OUT/plots/*.png and OUT/notes.md.
"""

import argparse
import csv
import json
import statistics
from pathlib import Path

from common.errors import UserError, run_cli
from common.report import machine_description, report_dir, markdown_table, merge_metrics
from common.run import read_metrics
from mnist import train as mnist_train

CONFIGS = {"softmax": "mnist/configs/baseline.yaml", "cnn": "mnist/configs/cnn.yaml"}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="mnist/week01.py", description="Learning-rate sweep on MNIST.")
    parser.add_argument("--out", default="results/week01", help="report folder; must not exist yet")
    parser.add_argument("--models", default="softmax,cnn", help="comma-separated models: softmax, cnn")
    parser.add_argument("--lrs", default="1e-4,1e-3,1e-2,1e-1", help="comma-separated peak learning rates")
    parser.add_argument("--seeds", default="0,1", help="comma-separated run seeds")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (the LR schedule spans them)")
    parser.add_argument("--max-steps", type=int, default=0, help="cap on optimizer steps per run (0 = no cap)")
    parser.add_argument("--data-dir", default="data/mnist", help="folder with the MNIST IDX files")
    args = parser.parse_args(argv)
    try:
        args.lrs = [float(x) for x in args.lrs.split(",")]
        args.seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError as exc:
        raise UserError(f"--lrs and --seeds take comma-separated numbers ({exc}); for example --lrs 1e-3,1e-2") from None
    args.models = args.models.split(",")
    unknown = [m for m in args.models if m not in CONFIGS]
    if unknown:
        raise UserError(f"--models has unknown model {unknown[0]!r}; valid models: {', '.join(CONFIGS)}")
    return args


def run_sweep(args, out: Path) -> list[dict]:
    records = []
    total = len(args.models) * len(args.lrs) * len(args.seeds)
    for model in args.models:
        for lr in args.lrs:
            for seed in args.seeds:
                print(f"=== week01 run {len(records) + 1}/{total}: {model} lr={lr:g} seed={seed}", flush=True)
                result = mnist_train.main([
                    "--config", CONFIGS[model], f"--run.name={model}_lr{lr:g}_s{seed}",
                    f"--run.results_dir={out / 'runs'}", f"--run.seed={seed}", f"--train.lr={lr}",
                    f"--train.epochs={args.epochs}", f"--train.max_steps={args.max_steps}",
                    "--train.log_every=20", f"--data.dir={args.data_dir}", "--system.num_workers=0",
                ])
                summary = result["summary"]
                train_rows = [r for r in read_metrics(result["run_dir"] / "metrics.csv") if r["split"] == "train"]
                records.append({
                    "model": model, "lr": lr, "seed": seed, "best_val_acc": summary["best_val_acc"],
                    "test_acc": summary["test_acc"], "final_train_loss": float(train_rows[-1]["loss"]),
                    "train_time_s": summary["train_time_s"], "run_dir": str(result["run_dir"]),
                })
    return records


def plot_results(records: list[dict], out: Path, models: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in models:
        mine = [r for r in records if r["model"] == model]
        lrs = sorted({r["lr"] for r in mine})
        means = [statistics.mean(r["best_val_acc"] for r in mine if r["lr"] == lr) for lr in lrs]
        line = ax.plot(lrs, [100 * m for m in means], "-", label=f"{model} (mean of seeds)")[0]
        ax.plot([r["lr"] for r in mine], [100 * r["best_val_acc"] for r in mine], "o", color=line.get_color(), alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("best validation accuracy (%)")
    ax.set_title("MNIST learning-rate sweep (dots: single seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "plots" / "val_acc_vs_lr.png", dpi=100)
    plt.close(fig)

    for model in models:
        fig, ax = plt.subplots(figsize=(6, 4))
        for lr in sorted({r["lr"] for r in records if r["model"] == model}):
            for i, rec in enumerate(r for r in records if r["model"] == model and r["lr"] == lr):
                rows = [row for row in read_metrics(Path(rec["run_dir"]) / "metrics.csv") if row["split"] == "train"]
                ax.plot([int(row["step"]) for row in rows], [float(row["loss"]) for row in rows],
                        color=f"C{sorted({r['lr'] for r in records}).index(lr)}", alpha=1.0 if i == 0 else 0.4,
                        label=f"lr {lr:g}" if i == 0 else None)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("train loss (mean over 20 steps)")
        ax.set_title(f"{model}: train loss by learning rate (faint: other seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "plots" / f"train_loss_{model}.png", dpi=100)
        plt.close(fig)


def summarise(records: list[dict], model: str) -> list[dict]:
    """Per learning rate: mean and range over seeds of val and test accuracy and final loss."""
    rows = []
    for lr in sorted({r["lr"] for r in records if r["model"] == model}):
        mine = [r for r in records if r["model"] == model and r["lr"] == lr]
        vals = [r["best_val_acc"] for r in mine]
        rows.append({
            "lr": lr, "n": len(mine), "val_mean": statistics.mean(vals), "val_min": min(vals), "val_max": max(vals),
            "test_mean": statistics.mean(r["test_acc"] for r in mine),
            "loss_mean": statistics.mean(r["final_train_loss"] for r in mine),
        })
    return rows


def last_quarter_drop(run_dir: str) -> float:
    """Relative fall of the train loss over the last quarter of a run (positive: still descending)."""
    losses = [float(r["loss"]) for r in read_metrics(Path(run_dir) / "metrics.csv") if r["split"] == "train"]
    start = losses[(3 * len(losses)) // 4 - 1] if len(losses) >= 4 else losses[0]
    return (start - losses[-1]) / start


def curve_facts(records: list[dict], model: str) -> str:
    """Describe the smallest and largest rates from their loss curves, in measured numbers."""
    rows = summarise(records, model)
    smallest, largest = rows[0], rows[-1]
    best = max(rows, key=lambda r: r["val_mean"])
    drops = [last_quarter_drop(r["run_dir"]) for r in records if r["model"] == model and r["lr"] == smallest["lr"]]
    drop = statistics.mean(drops)
    still = "so it was stopped while still learning" if drop > 0.05 else "so it had nearly flattened"
    text = (f"- **{model} curves**: at the smallest rate ({smallest['lr']:g}) the train loss fell by "
            f"{100 * drop:.0f}% over the last quarter of the budget (mean of seeds), {still}.")
    if largest["lr"] != best["lr"]:
        text += (f" The largest rate ({largest['lr']:g}) ended at a train loss of {largest['loss_mean']:.4f}, "
                 f"against {best['loss_mean']:.4f} at the best rate ({best['lr']:g}).")
    return text


def write_notes(records: list[dict], args, out: Path) -> None:
    sections = []
    findings = []
    for model in args.models:
        rows = summarise(records, model)
        table = markdown_table(
            ["lr", "seeds", "val acc mean (min to max)", "test acc mean", "final train loss"],
            [[f"{r['lr']:g}", r["n"], f"{100 * r['val_mean']:.2f}% ({100 * r['val_min']:.2f} to {100 * r['val_max']:.2f})",
              f"{100 * r['test_mean']:.2f}%", f"{r['loss_mean']:.4f}"] for r in rows],
        )
        sections.append(f"### {model}\n\n{table}\n")
        best = max(rows, key=lambda r: r["val_mean"])
        worst = min(rows, key=lambda r: r["val_mean"])
        spread = max(r["val_max"] - r["val_min"] for r in rows)
        runner_up = sorted(rows, key=lambda r: r["val_mean"])[-2] if len(rows) > 1 else best
        gap = best["val_mean"] - runner_up["val_mean"]
        if len(args.seeds) < 2:
            verdict = "with one seed there is no spread to compare it against"
        elif gap > spread:
            verdict = "larger than the widest seed spread, so the ranking of the top two rates holds at this budget"
        else:
            verdict = "within the seed spread, so the top two rates are not separable with this many seeds"
        findings.append(
            f"- **{model}**: lr {best['lr']:g} is best on validation ({100 * best['val_mean']:.2f}%, test "
            f"{100 * best['test_mean']:.2f}%); lr {worst['lr']:g} is worst ({100 * worst['val_mean']:.2f}%). "
            f"The gap to the runner-up (lr {runner_up['lr']:g}) is {100 * gap:.2f} pp, {verdict} "
            f"(widest seed spread {100 * spread:.2f} pp)."
        )
    budget = f"{args.epochs} epoch(s)" + (f", capped at {args.max_steps} steps" if args.max_steps else "")
    notes = f"""# Week 1: learning-rate sweep on MNIST

## Hypothesis

With Adam and a fixed budget of {budget}, a rate far below the best under-fits (the loss is still
falling when the budget ends) and a rate far above it makes the loss noisy or stuck. Softmax
regression is convex, so it should prefer a narrow band around 1e-3; the CNN has BatchNorm, which
keeps activations scaled and should tolerate larger rates.

## Method

- Models and configs: {', '.join(f'{m} (`{CONFIGS[m]}`)' for m in args.models)}; the CNN keeps its
  warmup plus cosine schedule, softmax regression a constant rate.
- Peak learning rates {', '.join(f'{lr:g}' for lr in args.lrs)} x seeds {', '.join(map(str, args.seeds))},
  each for {budget}, global batch from the config, one process.
- Rates are ranked by the best validation accuracy (5,000 images held out of the training set);
  the test accuracy of the best-validation checkpoint is reported beside it, not used to choose.
- Machine: {machine_description()}.
- Raw numbers: `metrics.csv` (every logged row of every run), `runs.csv` (one row per run), run
  directories under `runs/`.

## Result

{chr(10).join(sections)}
![validation accuracy against learning rate](plots/val_acc_vs_lr.png)

{chr(10).join(f'![{m} train loss](plots/train_loss_{m}.png)' for m in args.models)}

## Interpretation

{chr(10).join(findings)}

{chr(10).join(curve_facts(records, m) for m in args.models)}

## Next step

Refine the grid by a factor of about 3 around each best rate, add seeds until the seed spread is
smaller than the gaps being compared, and check whether a longer budget moves the best rate (it
usually moves down as training gets longer).
"""
    (out / "notes.md").write_text(notes)


def main(argv) -> None:
    args = parse_args(argv)
    with report_dir(args.out) as out:
        records = run_sweep(args, out)
        merge_metrics([({"model": r["model"], "lr": r["lr"], "seed": r["seed"]}, Path(r["run_dir"]) / "metrics.csv")
                       for r in records], out / "metrics.csv")
        with open(out / "runs.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0].keys()))
            writer.writeheader()
            writer.writerows(records)
        plot_results(records, out, args.models)
        write_notes(records, args, out)
        (out / "sweep.json").write_text(json.dumps(vars(args), indent=2) + "\n")
        print(f"week01 report: {out / 'notes.md'}")


if __name__ == "__main__":
    run_cli(main)
