"""The run directory: config.yaml, metrics.csv, summary.json, train.log, checkpoints/, plots/.

Nothing is overwritten: a new run gets `<results_dir>/<name>_<YYYYmmdd-HHMMSS>`, with `_1`, `_2`,
... appended when that name exists. A resumed run reopens its directory and cuts metrics.csv back
to the rows its checkpoint had seen, so rows logged after the checkpoint are not repeated.
"""

import csv
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def create_run_dir(results_dir: str, name: str) -> Path:
    """Make a fresh run directory; mkdir without exist_ok makes the name claim atomic."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(results_dir)
    root.mkdir(parents=True, exist_ok=True)
    base = root / f"{name}_{stamp}"
    candidate, suffix = base, 0
    while True:
        try:
            candidate.mkdir()
            break
        except FileExistsError:
            suffix += 1
            candidate = Path(f"{base}_{suffix}")
    (candidate / "checkpoints").mkdir()
    (candidate / "plots").mkdir()
    return candidate


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


class MetricsWriter:
    """Append rows to metrics.csv with a fixed header, flushing each row so a crash loses at most one."""

    def __init__(self, path: Path, columns: list[str], keep_rows: int | None = None):
        self.path = path
        self.columns = columns
        self.rows = 0
        if keep_rows is None:
            with open(path, "x", newline="") as f:
                csv.writer(f).writerow(columns)
        else:
            self._truncate(keep_rows)
        self._file = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=columns, extrasaction="raise")

    def _truncate(self, keep_rows: int) -> None:
        with open(self.path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = list(reader)
        if header != self.columns:
            raise ValueError(f"{self.path} has columns {header}, expected {self.columns}")
        kept = rows[:keep_rows]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(kept)
        os.replace(tmp, self.path)
        self.rows = len(kept)

    def log(self, **row) -> None:
        self._writer.writerow({key: _format_cell(row.get(key)) for key in self.columns})
        self._file.flush()
        self.rows += 1

    def close(self) -> None:
        self._file.close()


def _format_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        # repr keeps every bit of a float64, so equal losses print equal and different ones differ.
        return repr(value)
    return str(value)


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def setup_logging(run_dir: Path | None, is_main: bool, name: str = "train") -> logging.Logger:
    """Log to the console and run_dir/train.log on rank 0; other ranks log warnings to stderr only."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    formatter = logging.Formatter("%(message)s")
    if is_main:
        logger.setLevel(logging.INFO)
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(formatter)
        console.addFilter(lambda record: record.levelno < logging.WARNING)
        logger.addHandler(console)
        warnings = logging.StreamHandler(sys.stderr)
        warnings.setLevel(logging.WARNING)
        warnings.setFormatter(formatter)
        logger.addHandler(warnings)
        if run_dir is not None:
            file_handler = logging.FileHandler(run_dir / "train.log")
            file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            logger.addHandler(file_handler)
    else:
        logger.setLevel(logging.WARNING)
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(formatter)
        logger.addHandler(console)
    return logger


def git_commit() -> str:
    """Return the repository's HEAD commit, with `-dirty` when tracked files changed, or `unknown`."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown"
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
        )
        dirty = "-dirty" if status.stdout.strip() else ""
        return head.stdout.strip() + dirty
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
