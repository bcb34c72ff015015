"""Same-budget ablation: train every arm of a grid for several seeds and compare each arm to a baseline.

    python cifar/ablate.py --grid cifar/ablations/mnist_lr.yaml --out results/ablate_mnist_lr
    python cifar/ablate.py --grid cifar/ablations/mnist_lr.yaml --out /tmp/abl --seeds 0,1 --workers 2
    python cifar/ablate.py --help

The grid names a training script, a base config, a budget in samples, optimizer steps or FLOPs,
and the arms as config overrides (see cifar/ablate_grid.py). The script must keep the repository's
contract: `--config FILE` plus dotted `--section.key=value` overrides, a run directory with
summary.json, metrics.csv and checkpoints/last.pt, and exit status 2 with one `error:` line on bad
input. Every arm gets the same budget, because the runner turns it into a step count per arm and
passes it as both train.max_steps and train.schedule_steps, so the LR schedule ends with the budget.

Before training, one short probe run per arm (one optimizer step) checks the arm's config with the
script itself and measures FLOPs per step; a probe that exits 2 makes the runner exit 2 without
creating OUT. Then every (arm, seed) trains in OUT/runs/<arm>/seed<k>/, several at once. Running the
same command again skips finished runs and redoes dead ones (resumed from checkpoints/last.pt where
one exists). The report goes to OUT/ablation.csv, OUT/ablation.md and OUT/plots/ (see
cifar/ablate_report.py). Paths in the grid are relative to the current directory, so run from the
repository root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from cifar import ablate_report
from cifar.ablate_grid import Arm, Grid, load_grid, override_args
from cifar.ablate_jobs import Job, JobResult, first_error_line, run_jobs, unique_path
from common.errors import UserError, run_cli


class StrictParser(argparse.ArgumentParser):
    """Argument parser that reports a bad command line as one `error:` line (exit 2) instead of usage text."""

    def error(self, message: str):
        raise UserError(f"{message}; see python cifar/ablate.py --help")


def parse_args(argv) -> argparse.Namespace:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity mask
        cores = os.cpu_count() or 1
    parser = StrictParser(
        prog="cifar/ablate.py",
        description="Train every arm of an ablation grid for several seeds at the same budget and compare "
                    "each arm to the baseline (Welch t-test, 95% confidence intervals).",
        epilog="The grid file sets script, base_config, seeds, budget (one of samples, steps, flops), metric, "
               "baseline, overrides and arms; see cifar/ablations/mnist_lr.yaml. An arm may set _nproc: N to "
               "train with torchrun on N processes, which takes N worker slots.",
    )
    parser.add_argument("--grid", required=True, metavar="GRID.yaml", help="grid file that describes the ablation")
    parser.add_argument("--out", required=True, metavar="OUT_DIR",
                        help="output folder; it must be new, empty, or hold an earlier run of the same grid "
                             "(then finished runs are kept and only missing or dead runs train)")
    parser.add_argument("--threads-per-run", type=int, default=1, metavar="T",
                        help="torch threads per training process, passed as system.threads and OMP_NUM_THREADS (default 1)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help=f"worker slots: runs that train at the same time, a _nproc arm taking _nproc slots and "
                             f"one larger than all slots training alone (default max(1, usable cores // threads "
                             f"per run), {cores} cores here)")
    parser.add_argument("--seeds", default=None, metavar="0,1,2",
                        help="comma-separated run seeds; replaces the grid's seeds list")
    args = parser.parse_args(argv)

    if args.threads_per_run < 1:
        raise UserError(f"--threads-per-run is {args.threads_per_run}, must be at least 1")
    if args.workers is None:
        args.workers = max(1, cores // args.threads_per_run)
    if args.workers < 1:
        raise UserError(f"--workers is {args.workers}, must be at least 1")
    if args.seeds is not None:
        try:
            args.seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise UserError(f"--seeds {args.seeds!r} must be comma-separated integers, for example --seeds 0,1,2") from None
    return args


# ---------------------------------------------------------------------------------------------
# Output folder


def _parsed(text: str) -> Any:
    """YAML content for comparison; text that does not parse is compared as text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def check_out_dir(out: Path, grid: Grid) -> bool:
    """Return True when OUT is new (missing or empty); accept an existing OUT only for the same grid.

    The seeds are left out of the comparison, so a re-run with more seeds adds runs to the same ablation.
    """
    if not out.exists():
        return True
    if not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    if not any(out.iterdir()):
        return True
    stored = out / "grid.yaml"
    if not stored.is_file():
        raise UserError(f"output folder {out} is not empty and contains no grid.yaml, so it is not an earlier "
                        f"run of this grid; pass a new --out folder")
    old = _parsed(stored.read_text())
    if not isinstance(old, dict):
        raise UserError(f"{stored} is not a grid mapping; pass a new --out folder")
    differ = sorted(k for k in set(old) | set(grid.mapping) if k != "seeds" and old.get(k) != grid.mapping.get(k))
    if differ:
        raise UserError(f"output folder {out} contains an ablation of a different grid (keys that differ: "
                        f"{', '.join(differ)}); pass a new --out folder or use the grid in {stored}")
    stored_base = out / "base_config.yaml"
    if stored_base.is_file() and _parsed(stored_base.read_text()) != _parsed(grid.base_config.read_text()):
        raise UserError(f"base config {grid.base_config} changed since the runs in {out} started (they used "
                        f"{stored_base}); pass a new --out folder")
    return False


def run_dirs(folder: Path) -> list[Path]:
    """Run directories under folder, oldest first by modification time."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: (p.stat().st_mtime, p.name))


def find_finished(folder: Path) -> Path | None:
    finished = [p for p in run_dirs(folder) if (p / "summary.json").is_file()]
    return finished[-1] if finished else None


def find_resumable(folder: Path) -> Path | None:
    """Return the newest run directory without summary.json that has checkpoints/last.pt, if any."""
    dead = [p for p in run_dirs(folder)
            if not (p / "summary.json").is_file() and (p / "checkpoints" / "last.pt").is_file()]
    return dead[-1] if dead else None


def read_summary(run_dir: Path) -> dict:
    return ablate_report.read_json(run_dir / "summary.json")


# ---------------------------------------------------------------------------------------------
# Child processes


def child_env(threads: int) -> dict[str, str]:
    """Environment of every child: loopback-only rendezvous for torchrun and a fixed thread count."""
    env = dict(os.environ)
    env.update(GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


def train_command(grid: Grid, arm: Arm, threads: int, extra: list[str]) -> list[str]:
    """Build the script's command line: the launcher, the base config, the arm's overrides, the runner's keys.

    system.num_workers=0 comes first so that a grid can still ask for DataLoader workers.
    """
    if arm.nproc == 1:
        launcher = [sys.executable, str(grid.script)]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={arm.nproc}", str(grid.script)]
    return [*launcher, "--config", str(grid.base_config), "--system.num_workers=0",
            *override_args(arm.overrides), f"--system.threads={threads}", *extra]


def console_log(folder: Path) -> Path:
    return unique_path(folder / f"console_{time.strftime('%Y%m%d-%H%M%S')}.log")


# ---------------------------------------------------------------------------------------------
# Probes and the budget


SUMMARY_KEYS = ("test_acc", "steps", "flops_per_step", "global_batch")


def probe_arms(grid: Grid, out: Path, fresh: bool, args) -> tuple[dict[str, dict], Path | None]:
    """Run one optimizer step per arm that has no finished probe; return (summaries, temporary probe folder).

    For a new OUT the probes go to a temporary folder, so a config that the script rejects leaves no
    OUT behind. The caller moves that folder to OUT/probes once the whole grid is accepted.
    """
    summaries, missing = {}, []
    for arm in grid.arms:
        found = None if fresh else find_finished(out / "probes" / arm.name)
        if found is not None:
            summaries[arm.name] = read_summary(found)
        else:
            missing.append(arm)
    if not missing:
        return summaries, None

    root = Path(tempfile.mkdtemp(prefix="ablate-probes-")) if fresh else out / "probes"
    jobs = []
    for arm in missing:
        folder = root / arm.name
        folder.mkdir(parents=True, exist_ok=True)
        command = train_command(grid, arm, args.threads_per_run, [
            "--run.name=probe", f"--run.seed={grid.seeds[0]}", f"--run.results_dir={folder}",
            "--train.max_steps=1", "--train.schedule_steps=1",
        ])
        jobs.append(Job(command, console_log(folder), child_env(args.threads_per_run), slots=arm.nproc, payload=arm))
    print(f"probing {len(jobs)} arm(s) with one optimizer step each: checks every config with "
          f"{grid.script} and measures FLOPs per step", flush=True)
    results = run_jobs(jobs, args.workers, on_start=lambda job: None, on_finish=lambda result: None)

    rejected, crashed = [], []
    for result in sorted(results, key=lambda r: grid.arms.index(r.job.payload)):
        arm = result.job.payload
        run_dir = find_finished(root / arm.name)
        if result.returncode == 0 and run_dir is not None:
            summaries[arm.name] = read_summary(run_dir)
            continue
        line = first_error_line(result.job.log_path)
        if result.returncode != 0 and line is not None:
            rejected.append(f"arm {arm.name}: {line.removeprefix('error: ')}")
        else:
            crashed.append(result)
    if rejected:
        if fresh:
            shutil.rmtree(root)  # only this call's scratch probes; OUT was never created
        raise UserError(f"{grid.script} rejected the config of " + "; ".join(rejected))
    if crashed:
        for result in crashed:
            print(f"failed: probe of arm {result.job.payload.name} exited with status {result.returncode} "
                  f"without summary.json; log {result.job.log_path}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    return summaries, root if fresh else None


def check_summary_keys(summary: dict, grid: Grid, arm: Arm) -> None:
    for key in (grid.metric, *SUMMARY_KEYS):
        value = summary.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            numeric = sorted(k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
            raise UserError(f"summary.json of {grid.script} (probe of arm {arm.name}) has no numeric key {key!r}; "
                            f"numeric keys: {', '.join(numeric)}")


def set_budget(grid: Grid, summaries: dict[str, dict]) -> None:
    """Turn the grid's budget into each arm's step count (floor division, so no arm exceeds the budget)."""
    for arm in grid.arms:
        summary = summaries[arm.name]
        arm.global_batch = int(summary["global_batch"])
        arm.flops_per_step = float(summary["flops_per_step"])
        if arm.batch_size is not None and arm.batch_size != arm.global_batch:
            raise UserError(f"arm {arm.name} sets train.batch_size {arm.batch_size}, but {grid.script} reported "
                            f"global_batch {arm.global_batch}; the script must treat train.batch_size as the global batch")
        if grid.budget_kind == "samples":
            arm.steps = grid.budget // arm.global_batch
            unit = f"one global batch ({arm.global_batch} samples)"
        elif grid.budget_kind == "steps":
            arm.steps = grid.budget
            unit = "one step"
        else:
            if arm.flops_per_step <= 0:
                raise UserError(f"{grid.script} reported flops_per_step {arm.flops_per_step} for arm {arm.name}, "
                                f"so a FLOPs budget cannot be split into steps; use a samples or steps budget")
            arm.steps = int(grid.budget // arm.flops_per_step)
            unit = f"one step ({arm.flops_per_step:.3g} FLOPs)"
        if arm.steps < 1:
            raise UserError(f"budget {grid.budget_kind} {grid.budget} is less than {unit} of arm {arm.name}; "
                            f"raise the budget")


def create_out_dir(out: Path, grid: Grid, probe_root: Path | None) -> None:
    """Create OUT with copies of the grid and the base config, and move the probes in."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.yaml").write_text(grid.text)
    (out / "base_config.yaml").write_text(grid.base_config.read_text())
    if probe_root is not None:
        shutil.move(str(probe_root), str(out / "probes"))


def print_plan(grid: Grid, args, total: int) -> None:
    print(f"ablation of {grid.script}: {len(grid.arms)} arms x {len(grid.seeds)} seeds = {total} runs | "
          f"budget {grid.budget_kind} {grid.budget:,} | {args.workers} worker slots x {args.threads_per_run} "
          f"thread(s) per run", flush=True)
    for arm in grid.arms:
        print(f"  arm {arm.name:12s} {arm.nproc} process(es) | global batch {arm.global_batch} | {arm.steps:,} steps | "
              f"{arm.steps * arm.global_batch:,} samples | {arm.steps * arm.flops_per_step:.3g} FLOPs", flush=True)


# ---------------------------------------------------------------------------------------------
# Training


def train_all(grid: Grid, out: Path, args) -> list[JobResult]:
    """Train every (arm, seed) that has no finished run; return the failed jobs."""
    total = len(grid.arms) * len(grid.seeds)
    print_plan(grid, args, total)
    jobs = []
    position = 0
    # Seed-major order, so that an interrupted ablation has every arm at the first seeds.
    for seed in grid.seeds:
        for arm in grid.arms:
            position += 1
            seed_dir = out / "runs" / arm.name / f"seed{seed}"
            done = find_finished(seed_dir)
            if done is not None:
                print(f"[{position}/{total}] skip   arm={arm.name} seed={seed}: finished in {done}", flush=True)
                continue
            extra = [f"--run.name={arm.name}_seed{seed}", f"--run.seed={seed}", f"--run.results_dir={seed_dir}",
                     f"--train.max_steps={arm.steps}", f"--train.schedule_steps={arm.steps}"]
            resume = find_resumable(seed_dir)
            if resume is not None:
                extra.append(f"--run.resume={resume}")
            seed_dir.mkdir(parents=True, exist_ok=True)
            command = train_command(grid, arm, args.threads_per_run, extra)
            jobs.append(Job(command, console_log(seed_dir), child_env(args.threads_per_run), slots=arm.nproc,
                            payload={"arm": arm, "seed": seed, "position": position, "resume": resume}))

    finished = total - len(jobs)
    failures = []

    def on_start(job: Job) -> None:
        p = job.payload
        origin = f"resuming {p['resume']}" if p["resume"] is not None else "new run"
        print(f"[{p['position']}/{total}] start  arm={p['arm'].name} seed={p['seed']} | {origin} | log {job.log_path}",
              flush=True)

    def on_finish(result: JobResult) -> None:
        nonlocal finished
        p = result.job.payload
        run_dir = find_finished(result.job.log_path.parent)
        head = f"[{p['position']}/{total}] "
        if result.returncode == 0 and run_dir is not None:
            finished += 1
            summary = read_summary(run_dir)
            print(f"{head}done   arm={p['arm'].name} seed={p['seed']} | {grid.metric} {100 * summary[grid.metric]:.2f}% | "
                  f"test_acc {100 * summary['test_acc']:.2f}% | {result.seconds:.1f} s | {finished}/{total} finished",
                  flush=True)
            return
        failures.append(result)
        reason = first_error_line(result.job.log_path) or "no error line"
        if result.returncode == 0:
            reason = "exited 0 but wrote no summary.json"
        print(f"{head}FAILED arm={p['arm'].name} seed={p['seed']} | exit status {result.returncode} after "
              f"{result.seconds:.1f} s | {reason} | log {result.job.log_path}", flush=True)

    run_jobs(jobs, args.workers, on_start, on_finish)
    return failures


def collect_records(grid: Grid, out: Path) -> tuple[list[ablate_report.Record], list[str]]:
    """Finished runs of the grid's arms and seeds, and a label for each (arm, seed) without one."""
    records, missing = [], []
    for arm in grid.arms:
        for seed in grid.seeds:
            run_dir = find_finished(out / "runs" / arm.name / f"seed{seed}")
            if run_dir is None:
                missing.append(f"{arm.name} seed {seed}")
            else:
                records.append(ablate_report.record_from_summary(arm.name, seed, grid.metric, run_dir))
    return records, missing


def main(argv) -> None:
    args = parse_args(argv)
    grid = load_grid(args.grid, args.seeds)
    out = Path(args.out)
    fresh = check_out_dir(out, grid)
    summaries, probe_root = probe_arms(grid, out, fresh, args)
    try:
        for arm in grid.arms:
            check_summary_keys(summaries[arm.name], grid, arm)
        set_budget(grid, summaries)
    except UserError:
        if probe_root is not None:
            shutil.rmtree(probe_root)  # this call's scratch probes; OUT was never created
        raise
    if fresh:
        create_out_dir(out, grid, probe_root)

    failures = train_all(grid, out, args)
    records, missing = collect_records(grid, out)
    decisions = ablate_report.write_report(out, grid, records, missing, args.workers, args.threads_per_run)
    print(f"report: {out / 'ablation.md'}", flush=True)
    for line in decisions:
        print(line, flush=True)
    if failures:
        for result in failures:
            p = result.job.payload
            print(f"failed: arm {p['arm'].name} seed {p['seed']} exited with status {result.returncode}; "
                  f"log {result.job.log_path}", file=sys.stderr, flush=True)
        raise SystemExit(1)


if __name__ == "__main__":
    run_cli(main)
