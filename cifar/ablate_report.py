"""The report of an ablation: ablation.csv, ablation.md, plots/arms.png and plots/curves.png.

Each arm's metric and test accuracy are summarised over seeds (mean, sample std, 95% t interval),
and each non-baseline arm is compared with the baseline by Welch's t-test (common/stats.py).
An arm "beats" or "is worse than" the baseline only when p < 0.05 and the 95% interval of the
difference excludes 0. Otherwise the report states that no difference was detected at this budget.
The metric and test_acc are fractions in summary.json and are printed in percent, their
differences in percentage points (pp).
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from common.report import cpu_name
from common.run import read_metrics
from common.stats import MeanCI, WelchResult, mean_ci, welch_test

ALPHA = 0.05
LEVEL = 0.95


@dataclass
class Record:
    """One finished run, as read from its summary.json."""

    arm: str
    seed: int
    metric: float
    test_acc: float
    steps: int
    samples: int
    flops: float
    train_time_s: float
    run_dir: str
    global_batch: int
    device: str  # "" when the script's summary.json has no device key


def read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def record_from_summary(arm: str, seed: int, metric: str, run_dir: Path) -> Record:
    summary = read_json(run_dir / "summary.json")
    steps = int(summary["steps"])
    return Record(
        arm=arm, seed=seed, metric=float(summary[metric]), test_acc=float(summary["test_acc"]), steps=steps,
        samples=steps * int(summary["global_batch"]), flops=steps * float(summary["flops_per_step"]),
        train_time_s=float(summary.get("train_time_s") or 0.0), run_dir=str(run_dir),
        global_batch=int(summary["global_batch"]), device=str(summary.get("device", "")),
    )


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def signed_pp(value: float) -> str:
    return f"{100 * value:+.2f}"


def format_p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def n_text(result: WelchResult) -> str:
    return str(result.n_b) if result.n_a == result.n_b else f"{result.n_b} (arm) and {result.n_a} (baseline)"


def decision_line(arm: str, result: WelchResult) -> str:
    """Word the comparison as one sentence: beats, is worse than, no detectable difference, or why no test ran."""
    diff = f"{signed_pp(result.diff)} pp"
    if result.p is None:
        return f"arm {arm}: no test at this budget ({diff}, n = {n_text(result)}): {result.note.removeprefix('no test: ')}"
    stats = (f"{100 * result.level:g}% CI {signed_pp(result.low)} to {signed_pp(result.high)}, "
             f"p = {format_p(result.p)}, n = {n_text(result)}")
    excludes_zero = result.low > 0 or result.high < 0
    if result.p < ALPHA and excludes_zero and result.diff > 0:
        return f"arm {arm} beats baseline by {diff} ({stats})"
    if result.p < ALPHA and excludes_zero and result.diff < 0:
        return f"arm {arm} is worse than baseline by {diff} ({stats})"
    return f"arm {arm}: no detectable difference at this budget ({diff}, {stats})"


def values(records: list[Record], arm: str, key: str) -> list[float]:
    return [getattr(r, key) for r in records if r.arm == arm]


def write_csv(path: Path, records: list[Record], metric: str) -> None:
    columns = ["arm", "seed", metric, "test_acc", "steps", "samples", "flops", "train_time_s", "run_dir"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in records:
            writer.writerow([r.arm, r.seed, repr(r.metric), repr(r.test_acc), r.steps, r.samples, repr(r.flops),
                             f"{r.train_time_s:.3f}", r.run_dir])


def _ci_cells(ci: MeanCI | None) -> list[str]:
    if ci is None:
        return ["0", "n/a", "n/a", "n/a"]
    interval = "n/a (n < 2)" if ci.low is None else f"{pct(ci.low)} to {pct(ci.high)}"
    return [str(ci.n), pct(ci.mean), pct(ci.std), interval]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def compare(records: list[Record], grid) -> tuple[list[str], list[list[str]]]:
    """Build the decision lines and comparison table rows for every non-baseline arm."""
    decisions, rows = [], []
    base_metric = values(records, grid.baseline, "metric")
    base_test = values(records, grid.baseline, "test_acc")
    for arm in grid.arms:
        if arm.name == grid.baseline:
            continue
        arm_metric = values(records, arm.name, "metric")
        if not arm_metric or not base_metric:
            missing = arm.name if not arm_metric else f"baseline {grid.baseline}"
            decisions.append(f"arm {arm.name}: no comparison, {missing} has no finished runs")
            continue
        result = welch_test(base_metric, arm_metric, LEVEL)
        test = welch_test(base_test, values(records, arm.name, "test_acc"), LEVEL)
        decisions.append(decision_line(arm.name, result))
        rows.append([
            arm.name, signed_pp(result.diff),
            "n/a" if result.low is None else f"{signed_pp(result.low)} to {signed_pp(result.high)}",
            "n/a" if result.df is None else f"{result.df:.1f}",
            "n/a" if result.p is None else format_p(result.p),
            signed_pp(test.diff),
            "n/a" if test.low is None else f"{signed_pp(test.low)} to {signed_pp(test.high)}",
            "n/a" if test.p is None else format_p(test.p),
        ])
    return decisions, rows


def write_markdown(path: Path, grid, records: list[Record], missing: list[str], machine: str,
                   workers: int, threads: int) -> list[str]:
    """Write ablation.md and return its decision lines."""
    metric = grid.metric
    shared = grid.mapping.get("overrides") or {}
    budget_rows = []
    for arm in grid.arms:
        own = grid.mapping["arms"][arm.name] or {}
        budget_rows.append([
            arm.name, ", ".join(f"`{k}={v}`" for k, v in own.items()) or "(base config)", str(arm.nproc),
            str(arm.global_batch), f"{arm.steps:,}", f"{arm.steps * arm.global_batch:,}",
            f"{arm.flops_per_step:.3g}", f"{arm.steps * arm.flops_per_step:.3g}",
        ])
    result_rows = []
    for arm in grid.arms:
        metric_values = values(records, arm.name, "metric")
        test_values = values(records, arm.name, "test_acc")
        times = values(records, arm.name, "train_time_s")
        result_rows.append([
            arm.name,
            *_ci_cells(mean_ci(metric_values, LEVEL) if metric_values else None),
            *_ci_cells(mean_ci(test_values, LEVEL) if test_values else None)[1:],
            f"{sum(times) / len(times):.1f}" if times else "n/a",
        ])
    decisions, compare_rows = compare(records, grid)
    off_budget = [f"{r.arm} seed {r.seed} ran {r.steps} steps" for r in records
                  if r.steps != next(a.steps for a in grid.arms if a.name == r.arm)]

    budget_rule = {
        "samples": "steps = samples // global batch of the arm",
        "steps": "the same step count for every arm",
        "flops": "steps = FLOPs // FLOPs per step of the arm, measured by a one-step probe run",
    }[grid.budget_kind]
    lines = [
        f"# Ablation: `{grid.path}`",
        "",
        f"- Script `{grid.script}`, base config `{grid.base_config}`, overrides for every arm: "
        + (", ".join(f"`{k}={v}`" for k, v in shared.items()) or "none") + ".",
        f"- Budget: {grid.budget_kind} = {grid.budget:,} per run, held equal across arms ({budget_rule}); the step "
        f"count is passed as train.max_steps and train.schedule_steps, so each LR schedule ends with the budget.",
        f"- Seeds: {', '.join(map(str, grid.seeds))}. Metric: `{metric}` (higher is better), used for the decisions; "
        f"`test_acc` is reported beside it and decides nothing.",
        f"- Machine: {machine}; {workers} worker slots, {threads} thread(s) per training process.",
        f"- Statistics: mean, sample standard deviation (ddof=1) and {100 * LEVEL:g}% t interval of the mean over "
        f"seeds; each arm against the baseline `{grid.baseline}` by Welch's t-test (two-sided, alpha {ALPHA}). "
        f"Accuracies in percent, differences in percentage points (pp), arm minus baseline.",
        "",
        "## Budget per arm",
        "",
        _table(["arm", "arm overrides", "processes", "global batch", "steps", "samples", "FLOPs/step", "FLOPs"],
               budget_rows),
        "",
        "## Results per arm",
        "",
        _table(["arm", "n", f"{metric} mean (%)", "std", f"{100 * LEVEL:g}% CI", "test_acc mean (%)", "std",
                f"{100 * LEVEL:g}% CI", "train time (s, mean)"], result_rows),
        "",
        f"## Against the baseline `{grid.baseline}`",
        "",
    ]
    if compare_rows:
        lines += [
            _table(["arm", f"{metric} diff (pp)", f"{100 * LEVEL:g}% CI", "Welch df", "p",
                    "test_acc diff (pp)", f"{100 * LEVEL:g}% CI", "p"], compare_rows),
            "",
        ]
    lines += [f"Decisions on `{metric}`:", ""] + [f"- {d}" for d in decisions or ["no arm besides the baseline"]]
    if missing or off_budget:
        lines += ["", "## Incomplete", ""]
        lines += [f"- no finished run: {m}" for m in missing]
        lines += [f"- off budget: {m}" for m in off_budget]
    lines += [
        "",
        "## Files",
        "",
        "- `ablation.csv`: one row per finished run; `plots/arms.png`: arm means with 95% intervals;",
        "  `plots/curves.png`: validation accuracy against samples seen, mean over seeds;",
        "  `runs/<arm>/seed<k>/`: run directories and console logs; `probes/`: the one-step probe runs.",
        "",
    ]
    path.write_text("\n".join(lines))
    return decisions


def plot_arms(path: Path, grid, records: list[Record]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [arm.name for arm in grid.arms]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(names) + 3), 4))
    for ax, key, label in ((axes[0], "metric", grid.metric), (axes[1], "test_acc", "test_acc")):
        for x, name in enumerate(names):
            points = values(records, name, key)
            if not points:
                continue
            ci = mean_ci(points, LEVEL)
            ax.plot([x] * len(points), [100 * v for v in points], "o", color="0.6", markersize=4)
            if ci.low is not None:
                error = [[100 * (ci.mean - ci.low)], [100 * (ci.high - ci.mean)]]
                ax.errorbar([x], [100 * ci.mean], yerr=error, fmt="s", color=f"C{x}", capsize=6)
            else:
                ax.plot([x], [100 * ci.mean], "s", color=f"C{x}")
        base = values(records, grid.baseline, key)
        if base:
            ax.axhline(100 * sum(base) / len(base), color="0.3", linestyle="--", linewidth=1, label="baseline mean")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20)
        ax.set_ylabel(f"{label} (%)")
        ax.set_title(f"{label}: mean and {100 * LEVEL:g}% CI (grey: seeds)")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def val_curve(record: Record) -> dict[int, float]:
    """Read validation accuracy by samples seen (step x global batch) from the run's metrics.csv."""
    rows = read_metrics(Path(record.run_dir) / "metrics.csv")
    return {int(row["step"]) * record.global_batch: float(row["acc"]) for row in rows if row["split"] == "val"}


def plot_curves(path: Path, grid, records: list[Record]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, arm in enumerate(grid.arms):
        curves = [val_curve(r) for r in records if r.arm == arm.name]
        curves = [c for c in curves if c]
        if not curves:
            continue
        for curve in curves:
            xs = sorted(curve)
            ax.plot(xs, [100 * curve[x] for x in xs], color=f"C{i}", alpha=0.25, linewidth=1)
        # The mean is drawn only where every seed has a point, so it never mixes different seed sets.
        common = sorted(set.intersection(*(set(c) for c in curves)))
        mean = [100 * sum(c[x] for c in curves) / len(curves) for x in common]
        ax.plot(common, mean, "-o", color=f"C{i}", markersize=3, label=f"{arm.name} (n = {len(curves)})")
    ax.set_xlabel("samples seen")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("validation accuracy, mean over seeds (faint: single seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def describe_machine(records: list[Record]) -> str:
    """Describe the CPU, cores, OS, Python and torch versions, and the devices the runs reported.

    The runner never imports torch (that would add seconds to every call), so the torch version comes
    from the installed package metadata and the devices from the runs' summary.json `device` key.
    """
    cpu = cpu_name()
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    devices = sorted({r.device for r in records if r.device})
    return (f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch_version}, runs on device "
            f"{', '.join(devices) or 'unknown (no device key in summary.json)'}")


def write_report(out: Path, grid, records: list[Record], missing: list[str], workers: int, threads: int) -> list[str]:
    """Write every report file into OUT and return the decision lines."""
    write_csv(out / "ablation.csv", records, grid.metric)
    decisions = write_markdown(out / "ablation.md", grid, records, missing, describe_machine(records), workers, threads)
    (out / "plots").mkdir(exist_ok=True)
    plot_arms(out / "plots" / "arms.png", grid, records)
    plot_curves(out / "plots" / "curves.png", grid, records)
    return decisions

