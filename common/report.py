"""Helpers for the weekly reports: a fresh output folder, the machine description, merged metrics."""

import csv
import os
import platform
import shutil
from contextlib import contextmanager
from pathlib import Path

from common.errors import UserError
from common.run import read_metrics


def fresh_out_dir(path: str) -> Path:
    """Create the report folder; an existing one is never overwritten."""
    out = Path(path)
    if out.exists():
        raise UserError(f"output folder {out} already exists; move it away or pass --out with a new folder")
    out.mkdir(parents=True)
    (out / "plots").mkdir()
    return out


@contextmanager
def report_dir(path: str):
    """Create a fresh report folder; if the report fails before any run finished, remove the folder again.

    A folder that already contains a finished run (a summary.json) is kept, so no result is lost.
    """
    out = fresh_out_dir(path)
    try:
        yield out
    except BaseException:
        if not any(out.rglob("summary.json")):
            shutil.rmtree(out)
        raise


def cpu_name() -> str:
    """Return the CPU model from /proc/cpuinfo, or the platform's processor name elsewhere."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def machine_description() -> str:
    """Describe the CPU, core count, OS, Python and torch versions, and any GPU, in one line."""
    import torch  # imported here so that reports which need no torch (the ablation runner) load fast

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu_name()}, {os.cpu_count()} logical cores{gpu}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def merge_metrics(runs: list[tuple[dict, Path]], out_csv: Path) -> None:
    """Write every run's metrics.csv rows into one file, prefixed by the run's labels."""
    rows = []
    for labels, metrics_csv in runs:
        for row in read_metrics(metrics_csv):
            rows.append({**labels, **row})
    if not rows:
        raise ValueError("no metrics rows to merge")
    columns = list(rows[0].keys())
    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def plural(count: int, noun: str) -> str:
    """Format a count with its noun: "1 run", "3 runs"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
