"""Shared helpers: the repository root, the embedded MNIST, and running scripts as a user would."""

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MNIST_DIR = REPO / "data" / "mnist"


def script_env() -> dict:
    """Environment for child processes: loopback-only rendezvous and a fixed thread count."""
    env = dict(os.environ)
    env["GLOO_SOCKET_IFNAME"] = "lo"
    env["MASTER_ADDR"] = "127.0.0.1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_script(args: list[str], timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python <args>` from the repository root and capture its output."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


def run_torchrun(nproc: int, args: list[str], timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Start `torchrun --standalone` (rendezvous on localhost, free port) with nproc CPU processes."""
    return run_script(
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args],
        timeout=timeout, check=check,
    )


def only_run_dir(results_dir: Path) -> Path:
    runs = [p for p in results_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under root, to prove that a failed command changed nothing."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def mnist_dir() -> Path:
    return MNIST_DIR
