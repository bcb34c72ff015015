"""A small process pool for training runs: each job is a command with its own log file and a slot count.

Jobs start in list order whenever enough worker slots are free. A job that needs more slots than
exist starts alone, once every other job has finished, instead of waiting forever. The pool never
reads a child's output while it runs: stdout and stderr go to the job's log file, and the caller
inspects the exit status and the files the child wrote.
"""

from __future__ import annotations

import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable

POLL_S = 0.2  # how often finished children are collected; short against any training run


@dataclass
class Job:
    command: list[str]
    log_path: Path
    env: dict[str, str]
    slots: int = 1
    payload: Any = None  # the caller's data, handed back in the JobResult


@dataclass
class JobResult:
    job: Job
    returncode: int
    seconds: float


@dataclass
class _Running:
    job: Job
    process: subprocess.Popen
    log: IO
    start: float


def unique_path(path: Path) -> Path:
    """Return path if it is free, else path with _1, _2, ... before the suffix, so no file is overwritten."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate


def run_jobs(jobs: list[Job], workers: int, on_start: Callable[[Job], None],
             on_finish: Callable[[JobResult], None]) -> list[JobResult]:
    """Run every job with at most `workers` slots busy; return one result per job, in finishing order.

    On an exception (Ctrl-C included) the children that are still running get SIGTERM, then SIGKILL
    after 30 s, and the exception propagates.
    """
    pending = deque(jobs)
    running: list[_Running] = []
    results: list[JobResult] = []
    try:
        while pending or running:
            busy = sum(r.job.slots for r in running)
            while pending and (busy + pending[0].slots <= workers or not running):
                job = pending.popleft()
                job.log_path.parent.mkdir(parents=True, exist_ok=True)
                log = open(job.log_path, "x")
                process = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, env=job.env)
                running.append(_Running(job, process, log, time.perf_counter()))
                busy += job.slots
                on_start(job)
            time.sleep(POLL_S)
            still_running = []
            for run in running:
                returncode = run.process.poll()
                if returncode is None:
                    still_running.append(run)
                    continue
                run.log.close()
                result = JobResult(run.job, returncode, time.perf_counter() - run.start)
                results.append(result)
                on_finish(result)
            running = still_running
    finally:
        for run in running:
            run.process.terminate()
        for run in running:
            try:
                run.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()
            run.log.close()
    return results


def first_error_line(log_path: Path) -> str | None:
    """Return the first `error: ...` line a child printed (the contract's report of bad input), if any."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("error: "):
            return line
    return None
