"""Inference benchmarks: cached against uncached generation, ours against Hugging Face, naive against tiled attention.

    python infer/bench.py --out results/bench_infer                   # all parts, about 5 minutes on 2 cores
    python infer/bench.py --out /tmp/b --parts hf --repeats 3

Part `cache`: greedy tokens/s of infer/generate.py with and without the KV cache, for several
numbers of new tokens, on a randomly initialised GPT (4 layers, 256 wide, block 1,088). Random
weights cost exactly what trained ones do, and greedy decoding makes both sides compute the same
tokens.
Part `hf`: the same weights in transformers' GPT2LMHeadModel (a local config, saved and loaded
through GPT.from_pretrained), greedy, batch 1 and batch 8: our cached generation against
`GPT2LMHeadModel.generate`, with a check that both produce the same tokens.
Part `memory`: the peak resident memory of one forward and backward of naive attention
(the (L, L) matrix) and of infer/flash_attention.py, from 256 to 8,192 tokens. Each measurement
runs in a fresh process and reports its peak RSS growth after the inputs exist (Linux only).
Each side is measured --repeats times, alternating, and the median and the ratio are reported.
Writes OUT/bench.md, OUT/bench.json and OUT/plots/*.png.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common.errors import UserError, run_cli
from common.perf import sync
from common.report import machine_description, markdown_table, report_dir
from infer.generate import generate
from lm.model import GPT, GPTConfig

CACHE_MODEL = dict(vocab_size=4096, block_size=1088, n_layer=4, n_head=4, n_embd=256)
HF_MODEL = dict(vocab_size=8192, n_positions=512, n_embd=256, n_layer=4, n_head=4,  # a small GPT-2 shape
                bos_token_id=None, eos_token_id=None)  # no end-of-text: every run makes all its tokens
PROMPT_TOKENS = 16


def random_prompts(batch: int, length: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(vocab_size, (batch, length), generator=generator).tolist()


def bench_cache(repeats: int, new_token_counts: list[int]) -> list[dict]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CACHE_MODEL)).eval()
    prompt = random_prompts(1, PROMPT_TOKENS, CACHE_MODEL["vocab_size"])
    rows = []
    for n in new_token_counts:
        if PROMPT_TOKENS + n > CACHE_MODEL["block_size"]:
            raise UserError(f"--new-tokens {n} plus a {PROMPT_TOKENS}-token prompt exceeds block_size {CACHE_MODEL['block_size']}")
        rates = {"cached": [], "uncached": []}
        for _ in range(repeats):
            for side in rates:  # alternate, so drifting machine load hits both sides
                result = generate(model, prompt, n, use_cache=side == "cached")
                rates[side].append(result.new_tokens / (result.prefill_s + result.decode_s))
        cached, uncached = statistics.median(rates["cached"]), statistics.median(rates["uncached"])
        rows.append({"new_tokens": n, "cached_tokens_per_s": cached, "uncached_tokens_per_s": uncached,
                     "speedup": cached / uncached})
        print(f"{n} new tokens: cached {cached:,.0f} tokens/s, uncached {uncached:,.0f} tokens/s ({cached / uncached:.1f}x)",
              flush=True)
    return rows


def bench_hf(repeats: int, new_tokens: int, batches: list[int], device: str = "cpu") -> list[dict]:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's progress bar would interleave with the report lines
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**HF_MODEL, attn_implementation="sdpa")).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)  # config.json and model.safetensors, read back by our own loader
        ours = GPT.from_pretrained(folder, attention="sdpa").eval().to(device)
    hf = hf.to(device)
    rows = []
    for batch in batches:
        prompts = random_prompts(batch, PROMPT_TOKENS, HF_MODEL["vocab_size"], seed=batch)
        ids = torch.tensor(prompts, device=device)
        rates = {"ours": [], "hf": []}
        same_tokens = None
        for _ in range(repeats):
            start = time.perf_counter()
            result = generate(ours, prompts, new_tokens)
            sync(torch.device(device))
            rates["ours"].append(batch * new_tokens / (time.perf_counter() - start))
            start = time.perf_counter()
            with torch.no_grad():
                hf_out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
            sync(torch.device(device))
            rates["hf"].append(batch * new_tokens / (time.perf_counter() - start))
            same_tokens = hf_out[:, PROMPT_TOKENS:].tolist() == result.tokens
        ours_rate, hf_rate = statistics.median(rates["ours"]), statistics.median(rates["hf"])
        rows.append({"batch": batch, "new_tokens": new_tokens, "ours_tokens_per_s": ours_rate, "hf_tokens_per_s": hf_rate,
                     "ratio": ours_rate / hf_rate, "same_tokens": same_tokens})
        print(f"batch {batch}: ours {ours_rate:,.0f} tokens/s, transformers {hf_rate:,.0f} tokens/s "
              f"({ours_rate / hf_rate:.2f}x), same tokens: {same_tokens}", flush=True)
    return rows


def measure_attention_memory(kind: str, length: int) -> dict:
    """In this process: peak RSS growth (MB) and seconds of one forward and backward of one attention kind."""
    from infer.flash_attention import flash_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, length, 64, requires_grad=True) for _ in range(3))  # (B, H, L, D)
    # The peak left by importing torch can exceed what attention adds, so reset the kernel's
    # high-water mark (VmHWM) first: writing 5 to clear_refs does that on Linux 4.0 and later.
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_kib("VmRSS")
    start = time.perf_counter()
    if kind == "naive":
        scores = (q @ k.transpose(-2, -1)) / 8.0  # (B, H, L, L); 8 = sqrt(D)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        out = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v
    else:
        out = flash_attention(q, k, v, causal=True, block_q=256, block_k=256)
    out.sum().backward()
    seconds = time.perf_counter() - start
    return {"kind": kind, "length": length, "peak_mb": (rss_kib("VmHWM") - before) / 1024, "seconds": seconds}


def rss_kib(field: str) -> int:
    """Read a memory figure of this process from /proc/self/status, in KiB: VmRSS (now) or VmHWM (peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}; the memory benchmark needs Linux")


def bench_memory(lengths: list[int]) -> list[dict]:
    rows = []
    for length in lengths:
        row = {"length": length}
        for kind in ("naive", "tiled"):
            # A fresh process per point: ru_maxrss only grows, so an earlier, larger run would hide this one.
            proc = subprocess.run([sys.executable, __file__, "--measure-memory", kind, str(length)],
                                  capture_output=True, text=True, check=True)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            row[f"{kind}_peak_mb"], row[f"{kind}_seconds"] = result["peak_mb"], result["seconds"]
        row["ratio"] = row["naive_peak_mb"] / max(row["tiled_peak_mb"], 1e-9)
        rows.append(row)
        print(f"L={length}: naive {row['naive_peak_mb']:.1f} MB, tiled {row['tiled_peak_mb']:.1f} MB", flush=True)
    return rows


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "cache" in results:
        rows = results["cache"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["new_tokens"] for r in rows], [r["cached_tokens_per_s"] for r in rows], "o-", label="KV cache")
        ax.plot([r["new_tokens"] for r in rows], [r["uncached_tokens_per_s"] for r in rows], "o-", label="no cache")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("new tokens (16-token prompt)")
        ax.set_ylabel("tokens/s (median)")
        ax.set_title("Greedy generation, 4 layers x 256, batch 1")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "plots" / "cache_tokens_per_s.png", dpi=100)
        plt.close(fig)
    if "hf" in results:
        rows = results["hf"]
        fig, ax = plt.subplots(figsize=(6, 4))
        positions = range(len(rows))
        ax.bar([p - 0.2 for p in positions], [r["ours_tokens_per_s"] for r in rows], width=0.4, label="ours (infer/generate.py)")
        ax.bar([p + 0.2 for p in positions], [r["hf_tokens_per_s"] for r in rows], width=0.4, label="transformers generate")
        ax.set_xticks(list(positions), [f"batch {r['batch']}" for r in rows])
        ax.set_ylabel("tokens/s (median)")
        ax.set_title("Greedy generation, same GPT-2-shaped weights")
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "plots" / "ours_vs_transformers.png", dpi=100)
        plt.close(fig)
    if "memory" in results:
        rows = results["memory"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["length"] for r in rows], [r["naive_peak_mb"] for r in rows], "o-", label="naive (L x L scores)")
        ax.plot([r["length"] for r in rows], [r["tiled_peak_mb"] for r in rows], "o-", label="tiled (online softmax)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("peak RSS growth, forward + backward (MB)")
        ax.set_title("Attention memory, B=1, H=2, D=64, causal")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "plots" / "attention_memory.png", dpi=100)
        plt.close(fig)


def report_tables(results: dict) -> list[str]:
    lines = []
    if "cache" in results:
        lines.append("## Cached vs uncached generation (4 layers x 256, block 1,088, batch 1, greedy)\n")
        lines.append(markdown_table(["new tokens", "cached tokens/s", "uncached tokens/s", "speed-up"],
                                    [[r["new_tokens"], f"{r['cached_tokens_per_s']:,.0f}", f"{r['uncached_tokens_per_s']:,.0f}",
                                      f"{r['speedup']:.1f}x"] for r in results["cache"]]) + "\n")
    if "hf" in results:
        lines.append("## Our cached generation vs transformers `GPT2LMHeadModel.generate` (same weights, greedy)\n")
        lines.append(markdown_table(["batch", "new tokens", "ours tokens/s", "transformers tokens/s", "ours / transformers",
                                     "same tokens"],
                                    [[r["batch"], r["new_tokens"], f"{r['ours_tokens_per_s']:,.0f}", f"{r['hf_tokens_per_s']:,.0f}",
                                      f"{r['ratio']:.2f}", "yes" if r["same_tokens"] else "no"] for r in results["hf"]]) + "\n")
    if "memory" in results:
        lines.append("## Peak memory of one attention forward and backward (B=1, H=2, D=64, causal, fp32)\n")
        lines.append(markdown_table(["length", "naive MB", "tiled MB", "naive / tiled", "naive s", "tiled s"],
                                    [[r["length"], f"{r['naive_peak_mb']:.1f}", f"{r['tiled_peak_mb']:.1f}", f"{r['ratio']:.1f}",
                                      f"{r['naive_seconds']:.2f}", f"{r['tiled_seconds']:.2f}"] for r in results["memory"]]) + "\n")
    return lines


def write_report(results: dict, out: Path) -> None:
    """Write OUT/bench.json, OUT/bench.md and the plots of a run_parts result."""
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    header = (f"# Inference benchmarks\n\nMachine: {results['machine']}; {results['threads']} torch threads; "
              f"median of {results['repeats']} alternating measurements per side.\n")
    (out / "bench.md").write_text("\n".join([header, *report_tables(results)]))
    plot(results, out)


def run_parts(parts: list[str], repeats: int, new_tokens: list[int], hf_new_tokens: int, batches: list[int],
              lengths: list[int]) -> dict:
    results = {"machine": machine_description(), "threads": torch.get_num_threads(), "repeats": repeats}
    if "cache" in parts:
        results["cache"] = bench_cache(repeats, new_tokens)
    if "hf" in parts:
        results["hf"] = bench_hf(repeats, hf_new_tokens, batches)
    if "memory" in parts:
        results["memory"] = bench_memory(lengths)
    return results


def parse_ints(text: str, option: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",")]
    except ValueError:
        raise UserError(f"{option} is {text!r}; pass comma-separated integers such as 64,256") from None
    if any(v <= 0 for v in values):
        raise UserError(f"{option} is {text!r}; every value must be positive")
    return values


def main(argv) -> None:
    if argv[:1] == ["--measure-memory"]:  # the child process of bench_memory
        print(json.dumps(measure_attention_memory(argv[1], int(argv[2]))))
        return
    parser = argparse.ArgumentParser(prog="infer/bench.py", description="KV cache, transformers and attention-memory benchmarks.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="results/bench_infer", help="report folder; must not exist yet")
    parser.add_argument("--parts", default="cache,hf,memory", help="comma-separated: cache, hf, memory")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per side; the median is reported")
    parser.add_argument("--new-tokens", default="64,128,256,512,1024", help="new-token counts of the cache part")
    parser.add_argument("--hf-new-tokens", type=int, default=128, help="new tokens per row in the transformers part")
    parser.add_argument("--batches", default="1,8", help="batch sizes of the transformers part")
    parser.add_argument("--lengths", default="256,512,1024,2048,4096,8192", help="sequence lengths of the memory part")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - {"cache", "hf", "memory"})
    if unknown:
        raise UserError(f"--parts has unknown part {unknown[0]!r}; valid parts: cache, hf, memory")
    if args.repeats <= 0 or args.hf_new_tokens <= 0:
        raise UserError(f"--repeats ({args.repeats}) and --hf-new-tokens ({args.hf_new_tokens}) must be positive")
    new_tokens, batches = parse_ints(args.new_tokens, "--new-tokens"), parse_ints(args.batches, "--batches")
    lengths = parse_ints(args.lengths, "--lengths")
    with report_dir(args.out) as out:
        results = run_parts(parts, args.repeats, new_tokens, args.hf_new_tokens, batches, lengths)
        write_report(results, out)
        print(f"report: {out / 'bench.md'}")


if __name__ == "__main__":
    run_cli(main)
