"""Week 6: the linear learning-rate scaling rule across 1 and 2 processes, at equal samples seen.

    make week06                                      # = python cifar/week06.py --out results/week06
    python cifar/week06.py --out results/week06 --seeds 0,1,2,3,4,5    # add seeds to the same folder

Runs the grid cifar/ablations/week06.yaml with cifar/ablate.py (resumable: finished runs are
skipped), then writes the weekly deliverables next to the runner's ablation.md and ablation.csv:
metrics.csv (every row of every run, labelled by arm and seed) and notes.md.
"""

import argparse
import csv
import re
from pathlib import Path

import yaml

from cifar import ablate
from common.errors import run_cli
from common.report import machine_description, merge_metrics

GRID = "cifar/ablations/week06.yaml"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="cifar/week06.py", description="Linear LR scaling across 1 and 2 processes.")
    parser.add_argument("--out", default="results/week06", help="report folder; a folder of an earlier week06 run is resumed")
    parser.add_argument("--grid", default=GRID, help="grid file for cifar/ablate.py (the week 6 question by default)")
    parser.add_argument("--seeds", default="", help="comma-separated seeds replacing the grid's (for example 0,1,2,3,4,5)")
    parser.add_argument("--workers", default="", help="worker slots for the runner (default: one per core)")
    return parser.parse_args(argv)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(argv) -> None:
    args = parse_args(argv)
    runner_args = ["--grid", args.grid, "--out", args.out]
    if args.seeds:
        runner_args += ["--seeds", args.seeds]
    if args.workers:
        runner_args += ["--workers", args.workers]
    ablate.main(runner_args)

    out = Path(args.out)
    grid = yaml.safe_load(Path(args.grid).read_text())
    rows = read_rows(out / "ablation.csv")
    merge_metrics([({"arm": r["arm"], "seed": r["seed"]}, Path(r["run_dir"]) / "metrics.csv") for r in rows],
                  out / "metrics.csv")
    report = (out / "ablation.md").read_text()
    decisions = [line.lstrip("- ") for line in report.splitlines() if re.match(r"^-? ?arm \S+ ", line)]
    arms = grid["arms"]
    steps = {r["arm"]: r["steps"] for r in rows}
    called = sum(1 for line in decisions if " beats " in line or " is worse than " in line)
    n_seeds = len({r["seed"] for r in rows})
    notes = f"""# Week 6: linear learning-rate scaling across 1 and 2 processes

## Hypothesis

Doubling the global batch halves the number of optimizer steps at a fixed number of samples seen.
The linear scaling rule states that doubling the learning rate with the batch keeps the training
trajectory, and so the accuracy, roughly the same; keeping the old rate should then fall behind,
because each sample moves the weights half as far.

## Method

- Grid `{args.grid}`: script `{grid['script']}`, base config `{grid['base_config']}`, metric
  `{grid['metric']}` (test accuracy reported beside it), {grid['budget']} per run, seeds
  {sorted({int(r['seed']) for r in rows})}.
- Arms: {'; '.join(f"`{name}` = {spec}" for name, spec in arms.items())}. Optimizer steps per
  run: {', '.join(f'{name} {steps.get(name, "?")}' for name in arms)}. Warmup covers the same
  number of samples in every arm.
- Two-process arms run under `torchrun --standalone` with gloo on 127.0.0.1, one thread per process;
  the one-process arm also uses one thread, so every process gets the same compute.
- Per arm: mean, standard deviation and 95% Student-t interval over seeds; each arm against the
  baseline: difference of means with its 95% interval and a Welch t-test (two-sided).
- Machine: {machine_description()}.

## Result

The full tables are in [ablation.md](ablation.md); the decisions, as the runner printed them:

{chr(10).join(f'- {line}' for line in decisions)}

![arms](plots/arms.png)
![curves](plots/curves.png)

## Interpretation

{called} of {len(decisions)} comparisons found a difference. A difference is called only when the
95% interval of the difference excludes zero and p < 0.05. "No detectable difference" means the
arms are not separable with {n_seeds} seeds at this budget: it bounds the effect by the interval
printed beside it, and is not evidence that the arms are equal. Intervals narrow by about
1/sqrt(n) with more seeds (`--seeds`).

## Next step

Add seeds until the interval of the scaled arm's difference is narrower than 1 pp, then repeat on
the full CIFAR-10 set on GPUs, where large batches are the point of data parallelism, and try the
square-root scaling rule for AdamW.
"""
    (out / "notes.md").write_text(notes)
    print(f"week06 report: {out / 'notes.md'}")


if __name__ == "__main__":
    run_cli(main)
