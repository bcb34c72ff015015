"""Benchmarks for the language-model pieces, each side measured in the same run, alternating, with medians.

    python lm/bench.py --out results/bench_lm                # both parts, a few minutes on 2 cores
    python lm/bench.py --out /tmp/b --parts tokenizer --repeats 3

Part `attention`: training tokens/s (forward + backward + AdamW step) and MFU of a small GPT with
the hand-written attention and with F.scaled_dot_product_attention, across sequence lengths.
Part `tokenizer`: BPE training time for a 4,096-token vocabulary on tiny Shakespeare, and encoding
MB/s for the plain Python encoder and for tiktoken with our ranks (and tiktoken's own GPT-2
encoding when its files are already in the tiktoken cache; nothing is downloaded).
Writes OUT/bench.md and OUT/bench.json.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from common.errors import UserError, run_cli
from common.perf import measure_cpu_peak_tflops
from common.report import fresh_out_dir, machine_description, markdown_table
from lm.bpe import BPETokenizer
from lm.model import GPT, GPTConfig
from lm.tokens import gpt2_encoding

def time_training_steps(attention: str, seq_len: int, batch: int, steps: int) -> float:
    """Return tokens/s over `steps` AdamW steps after 2 warm-up steps."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=seq_len, n_layer=4, n_head=4, n_embd=128, attention=attention))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 65, (batch, seq_len))
    y = torch.randint(0, 65, (batch, seq_len))

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(x, y)[1].backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * seq_len / (time.perf_counter() - start)


def bench_attention(repeats: int, seq_lens: list[int]) -> list[dict]:
    peak = measure_cpu_peak_tflops() * 1e12
    rows = []
    for seq_len in seq_lens:
        batch = max(1, 4096 // seq_len)  # about 4k tokens per step at every length
        samples = {"manual": [], "sdpa": []}
        for _ in range(repeats):
            for attention in ("manual", "sdpa"):  # alternate, so drifting machine load hits both sides
                samples[attention].append(time_training_steps(attention, seq_len, batch, steps=3))
        model = GPT(GPTConfig(vocab_size=65, block_size=seq_len, n_layer=4, n_head=4, n_embd=128))
        manual, sdpa = statistics.median(samples["manual"]), statistics.median(samples["sdpa"])
        rows.append({"seq_len": seq_len, "batch": batch, "manual_tokens_per_s": manual, "sdpa_tokens_per_s": sdpa,
                     "sdpa_over_manual": sdpa / manual, "manual_mfu": model.estimate_mfu(manual, peak, seq_len),
                     "sdpa_mfu": model.estimate_mfu(sdpa, peak, seq_len)})
        print(f"T={seq_len}: manual {manual:,.0f} tokens/s, sdpa {sdpa:,.0f} tokens/s ({sdpa / manual:.2f}x)", flush=True)
    return rows


def gpt2_encoding_if_cached():
    """tiktoken's GPT-2 encoding when its files are in the cache, else None; never downloads."""
    try:
        return gpt2_encoding()
    except FileNotFoundError:
        return None


def bench_tokenizer(repeats: int, text: str, vocab_size: int = 4096) -> dict:
    train_seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        tok = BPETokenizer.train(text, vocab_size)
        train_seconds.append(time.perf_counter() - start)
    sample = text[:100_000]  # the Python encoder is slow; it gets a 100 kB slice
    megabytes = len(text.encode("utf-8")) / 1e6
    sample_mb = len(sample.encode("utf-8")) / 1e6
    python_rates, tiktoken_rates, gpt2_rates = [], [], []
    gpt2 = gpt2_encoding_if_cached()
    for _ in range(repeats):
        start = time.perf_counter()
        tok.encode_reference(sample)
        python_rates.append(sample_mb / (time.perf_counter() - start))
        start = time.perf_counter()
        ids = tok.encode(text)
        tiktoken_rates.append(megabytes / (time.perf_counter() - start))
        if gpt2 is not None:
            start = time.perf_counter()
            gpt2.encode_ordinary(text)
            gpt2_rates.append(megabytes / (time.perf_counter() - start))
    result = {
        "train_seconds_median": statistics.median(train_seconds), "train_seconds": train_seconds,
        "python_mb_per_s": statistics.median(python_rates), "tiktoken_ours_mb_per_s": statistics.median(tiktoken_rates),
        "bytes_per_token": len(text.encode("utf-8")) / len(ids),
        "gpt2_mb_per_s": statistics.median(gpt2_rates) if gpt2_rates else None,
    }
    print(f"BPE {vocab_size}: trained in {result['train_seconds_median']:.2f} s (median); encode: python "
          f"{result['python_mb_per_s']:.2f} MB/s, tiktoken with our ranks {result['tiktoken_ours_mb_per_s']:.1f} MB/s", flush=True)
    return result


def main(argv) -> None:
    parser = argparse.ArgumentParser(prog="lm/bench.py", description="Attention and tokenizer benchmarks.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="results/bench_lm", help="report folder; must not exist yet")
    parser.add_argument("--parts", default="attention,tokenizer", help="comma-separated: attention, tokenizer")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per side; the median is reported")
    parser.add_argument("--seq-lens", default="64,256,1024", help="sequence lengths for the attention part")
    parser.add_argument("--text", default="data/tinyshakespeare/input.txt", help="text for the tokenizer part")
    args = parser.parse_args(argv)
    out = fresh_out_dir(args.out)
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - {"attention", "tokenizer"})
    if unknown:
        raise UserError(f"--parts has unknown part {unknown[0]!r}; valid parts: attention, tokenizer")
    results = {"machine": machine_description(), "threads": torch.get_num_threads(), "repeats": args.repeats}
    lines = [f"# LM benchmarks\n\nMachine: {results['machine']}; {results['threads']} torch threads; "
             f"median of {args.repeats} alternating measurements per side.\n"]
    if "attention" in parts:
        rows = bench_attention(args.repeats, [int(s) for s in args.seq_lens.split(",")])
        results["attention"] = rows
        lines.append("## Training throughput, hand-written attention vs SDPA (4 layers, 128 wide)\n")
        lines.append(markdown_table(
            ["T", "batch", "manual tokens/s", "SDPA tokens/s", "SDPA / manual", "manual MFU", "SDPA MFU"],
            [[r["seq_len"], r["batch"], f"{r['manual_tokens_per_s']:,.0f}", f"{r['sdpa_tokens_per_s']:,.0f}",
              f"{r['sdpa_over_manual']:.2f}", f"{100 * r['manual_mfu']:.1f}%", f"{100 * r['sdpa_mfu']:.1f}%"] for r in rows]) + "\n")
    if "tokenizer" in parts:
        tok = bench_tokenizer(args.repeats, Path(args.text).read_text(encoding="utf-8"))
        results["tokenizer"] = tok
        gpt2 = f"{tok['gpt2_mb_per_s']:.1f} MB/s" if tok["gpt2_mb_per_s"] else "not measured (gpt2 files not in the tiktoken cache)"
        lines.append("## BPE tokenizer (4,096 tokens, tiny Shakespeare)\n")
        lines.append(markdown_table(
            ["what", "median"],
            [["training time", f"{tok['train_seconds_median']:.2f} s"],
             ["encode, plain Python (100 kB slice)", f"{tok['python_mb_per_s']:.2f} MB/s"],
             ["encode, tiktoken with our ranks", f"{tok['tiktoken_ours_mb_per_s']:.1f} MB/s"],
             ["encode, tiktoken gpt2", gpt2],
             ["bytes per token", f"{tok['bytes_per_token']:.2f}"]]) + "\n")
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench.md").write_text("\n".join(lines))
    print(f"report: {out / 'bench.md'}")


if __name__ == "__main__":
    run_cli(main)
