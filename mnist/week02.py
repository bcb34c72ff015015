"""Week 2: data-parallel throughput, memory and accuracy on CPU, 1 vs 2 processes at one global batch.

    make week02                                        # = python mnist/week02.py --out results/week02
    python mnist/week02.py --out /tmp/w2 --max-steps 60     # a quick smoke run

Every arm trains mnist/configs/ddp.yaml (the CNN, global batch 128) for the same number of steps;
the two-process arms run under `torchrun --standalone` with gloo on 127.0.0.1. Throughput is the
median over the log intervals of one run (the first interval contains the warm-up and is
dropped), with the min and max beside it. Scaling efficiency compares 2 processes of 1 thread with
1 process of 1 thread, so both sides use the same per-process compute; the 1 process x all threads
arm shows what intra-op threading alone reaches on the same cores. Writes OUT/throughput.md,
OUT/metrics.csv, OUT/plots/*.png and OUT/notes.md.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common.errors import UserError, run_cli
from common.report import machine_description, report_dir, markdown_table, merge_metrics
from common.run import read_metrics

REPO = Path(__file__).resolve().parent.parent
CONFIG = "mnist/configs/ddp.yaml"


def arms(cores: int) -> list[dict]:
    """List the compared configurations: processes, threads per process and dtype."""
    return [
        {"name": "1proc_1thread_fp32", "nproc": 1, "threads": 1, "dtype": "float32"},
        {"name": f"1proc_{cores}threads_fp32", "nproc": 1, "threads": cores, "dtype": "float32"},
        {"name": "2proc_1thread_fp32", "nproc": 2, "threads": 1, "dtype": "float32"},
        {"name": "2proc_1thread_bf16", "nproc": 2, "threads": 1, "dtype": "bfloat16"},
    ]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="mnist/week02.py", description="DDP throughput and memory on CPU.")
    parser.add_argument("--out", default="results/week02", help="report folder; must not exist yet")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per arm")
    parser.add_argument("--max-steps", type=int, default=0, help="cap on optimizer steps per arm (0 = no cap)")
    parser.add_argument("--log-every", type=int, default=25, help="steps per throughput measurement interval")
    parser.add_argument("--data-dir", default="data/mnist", help="folder with the MNIST IDX files")
    args = parser.parse_args(argv)
    if args.epochs <= 0 or args.max_steps < 0 or args.log_every <= 0:
        raise UserError("--epochs and --log-every must be positive and --max-steps zero or positive")
    return args


def run_arm(arm: dict, args, out: Path) -> Path:
    """Train one arm in a child process (torchrun for 2 processes) and return its run directory."""
    results_dir = out / "runs" / arm["name"]
    train_args = [
        "mnist/train.py", "--config", CONFIG, f"--run.name={arm['name']}", f"--run.results_dir={results_dir}",
        f"--system.dtype={arm['dtype']}", f"--system.threads={arm['threads']}", "--system.device=cpu",
        f"--train.epochs={args.epochs}", f"--train.max_steps={args.max_steps}",
        f"--train.log_every={args.log_every}", f"--data.dir={args.data_dir}",
    ]
    if arm["nproc"] > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={arm['nproc']}", *train_args]
    else:
        command = [sys.executable, *train_args]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"), "MASTER_ADDR": "127.0.0.1"}
    print(f"=== week02 arm {arm['name']}: {' '.join(command[1:])}", flush=True)
    proc = subprocess.run(command, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise UserError(f"arm {arm['name']} failed with exit status {proc.returncode}; its error is printed above")
    (run_dir,) = [p for p in results_dir.iterdir() if p.is_dir()]
    return run_dir


def measure(run_dir: Path) -> dict:
    """Median and range of the per-interval throughput, dropping the warm-up interval."""
    rows = [r for r in read_metrics(run_dir / "metrics.csv") if r["split"] == "train"]
    timed = rows[1:] if len(rows) > 1 else rows
    rates = [float(r["samples_per_s"]) for r in timed]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "samples_per_s": statistics.median(rates), "samples_per_s_min": min(rates), "samples_per_s_max": max(rates),
        "ms_per_step": statistics.median(float(r["ms_per_step"]) for r in timed), "intervals": len(rates),
        "peak_mem_mb": summary["peak_mem_mb"], "test_acc": summary["test_acc"], "steps": summary["steps"],
        "mfu": summary["mfu"], "params": summary["params"],
    }


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in results]
    medians = [r["samples_per_s"] for r in results]
    low = [r["samples_per_s"] - r["samples_per_s_min"] for r in results]
    high = [r["samples_per_s_max"] - r["samples_per_s"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(names, medians, yerr=[low, high], capsize=4, color=[f"C{i}" for i in range(len(names))])
    ax.set_ylabel("samples/s (median, bars: min to max)")
    ax.set_title("MNIST CNN training throughput on CPU")
    ax.tick_params(axis="x", labelrotation=15)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "plots" / "throughput.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        rows = [row for row in read_metrics(r["run_dir"] / "metrics.csv") if row["split"] == "train"]
        ax.plot([int(row["step"]) for row in rows], [float(row["loss"]) for row in rows], label=r["name"])
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss")
    ax.set_title("Same global batch, same curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "plots" / "loss.png", dpi=100)
    plt.close(fig)


def main(argv) -> None:
    args = parse_args(argv)
    with report_dir(args.out) as out:
        cores = os.cpu_count() or 1
        results = []
        for arm in arms(cores):
            run_dir = run_arm(arm, args, out)
            results.append({**arm, "run_dir": run_dir, **measure(run_dir)})
        merge_metrics([({"arm": r["name"], "nproc": r["nproc"], "threads": r["threads"], "dtype": r["dtype"]},
                        r["run_dir"] / "metrics.csv") for r in results], out / "metrics.csv")
        plot(results, out)

        by_name = {r["name"]: r for r in results}
        one, many = by_name["1proc_1thread_fp32"], by_name[f"1proc_{cores}threads_fp32"]
        two, two_bf16 = by_name["2proc_1thread_fp32"], by_name["2proc_1thread_bf16"]
        efficiency = two["samples_per_s"] / (2 * one["samples_per_s"])
        vs_threads = two["samples_per_s"] / many["samples_per_s"]
        table = markdown_table(
            ["arm", "processes x threads", "dtype", "samples/s median (min to max)", "ms/step", "peak RSS per rank (MB)", "MFU", "test acc"],
            [[r["name"], f"{r['nproc']} x {r['threads']}", r["dtype"],
              f"{r['samples_per_s']:,.0f} ({r['samples_per_s_min']:,.0f} to {r['samples_per_s_max']:,.0f})",
              f"{r['ms_per_step']:.1f}", f"{r['peak_mem_mb']:.0f}", f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a",
              f"{100 * r['test_acc']:.2f}%"] for r in results],
        )
        (out / "throughput.md").write_text(table + "\n")
        steps = results[0]["steps"]
        if vs_threads > 1.05:
            threads_verdict = "processes scale better than intra-op threads for this small CNN"
        elif vs_threads < 0.95:
            threads_verdict = "intra-op threads reach at least as much as processes here"
        else:
            threads_verdict = "the two ways of using the cores are about equal here"
        if two_bf16["samples_per_s"] > 1.05 * two["samples_per_s"]:
            bf16_verdict = "a gain, so this CPU has fast bf16 matmuls"
        else:
            bf16_verdict = ("no gain here; autocast adds casts, and bf16 matmuls only pay off on CPUs with "
                            "native bf16 instructions (AVX512-BF16 or AMX)")
        notes = f"""# Week 2: DDP and mixed precision on CPU

    ## Hypothesis

    At one global batch (128), 2 processes with 1 thread each should train about twice as fast as
    1 process with 1 thread, minus the cost of the gradient all-reduce; on a machine with {cores} cores,
    a single process using all {cores} threads is the real competitor. The final accuracy should not
    depend on the number of processes beyond noise, because every step sees the same 128 samples; it
    is not bitwise equal, since each rank computes BatchNorm statistics over its own 64 samples and
    draws its own dropout masks.

    ## Method

    - `{CONFIG}` (the CNN), {steps} optimizer steps per arm, one run per arm, CPU only, gloo over loopback.
    - Throughput: median of the per-interval samples/s over {results[0]['intervals']} intervals of
      {args.log_every} steps, first interval dropped; peak memory is the peak resident set size of rank 0
      (the whole process: Python, torch and the data). MFU uses the measured fp32 matmul peak of each
      process's threads, so bfloat16 rows are measured against the fp32 peak.
    - Machine: {machine_description()}.

    ## Result

    {table}

    - Scaling efficiency, 2 x 1 thread against 1 x 1 thread: **{100 * efficiency:.0f}%**
      ({two['samples_per_s']:,.0f} vs 2 x {one['samples_per_s']:,.0f} samples/s).
    - 2 processes x 1 thread against 1 process x {cores} threads: **{vs_threads:.2f}x** the throughput.
    - Test accuracy: 1 process {100 * one['test_acc']:.2f}%, 2 processes {100 * two['test_acc']:.2f}%
      ({100 * (two['test_acc'] - one['test_acc']):+.2f} pp); bfloat16 under DDP {100 * two_bf16['test_acc']:.2f}%.

    ![throughput](plots/throughput.png)
    ![loss](plots/loss.png)

    ## Interpretation

    - Each rank of the DDP run does half the per-step work, then all-reduces
      {4 * results[0]['params'] / 1e6:.2f} MB of fp32 gradients over loopback every step; an efficiency of
      {100 * efficiency:.0f}% is what remains after that communication and the shared memory bandwidth.
    - The 2-process and the {cores}-thread arms use the same cores; a ratio of {vs_threads:.2f}x says
      {threads_verdict}.
    - bfloat16 autocast on this CPU runs at {two_bf16['samples_per_s'] / two['samples_per_s']:.2f}x the fp32 speed:
      {bf16_verdict}.
      On a GPU the same flag uses tensor cores.

    ## Next step

    Repeat on a GPU node with `mnist/slurm_ddp.sbatch` (4 GPUs, nccl), where the all-reduce overlaps
    with the backward pass and the batch per GPU can grow; compare float16 with a gradient scaler.
    """
        (out / "notes.md").write_text(notes)
        print(table)
        print(f"week02 report: {out / 'notes.md'}")


if __name__ == "__main__":
    run_cli(main)
