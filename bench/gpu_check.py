"""One short run of the CUDA paths that CPU tests cannot reach, with a PASS or FAIL line and figures for each.

    python bench/gpu_check.py --out results/gpu_check                  # on a GPU machine, a few minutes
    python bench/gpu_check.py --out /tmp/g --device cpu --quick         # the same logic on a CPU (smoke test)

Checks, in order:
1. train_bf16: charlm/train.py with charlm/configs/gpu.yaml (bfloat16 autocast, torch.compile on
   CUDA) under `torchrun --nproc_per_node=1`, so the process group is nccl on CUDA: tokens/s, MFU,
   and the val loss must fall below ln(65), the loss of a uniform guess over the 65 characters.
2. train_fp16: the same in float16 with the gradient scaler, CUDA only.
3. attention: the hand-written attention against SDPA in float32 (TF32 off) and bfloat16 logits.
4. flash_attention: infer/flash_attention.py against SDPA, output and gradients, and on CUDA the
   peak allocated memory of naive and tiled attention at the longest length.
5. generation: our cached generation against transformers' generate on the same weights
   (identical greedy tokens required), and cached against uncached tokens/s.
Writes OUT/gpu_check.json and exits with status 1 when a check fails.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from any folder

from common.errors import UserError, run_cli  # noqa: E402
from common.perf import sync  # noqa: E402
from common.report import machine_description, report_dir  # noqa: E402
from infer.bench import bench_hf  # noqa: E402
from infer.flash_attention import flash_attention  # noqa: E402
from infer.generate import generate  # noqa: E402
from lm.model import GPT, GPTConfig  # noqa: E402


def check_training(out: Path, device: str, dtype: str, iters: int, compile_model: bool, quick: bool) -> dict:
    results_dir = out / f"runs_{dtype}"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    if device == "cuda":
        env.pop("GLOO_SOCKET_IFNAME")  # nccl picks its own interface; the gloo setting does not apply
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "charlm/train.py",
               "--config", "charlm/configs/gpu.yaml", f"--system.device={device}", f"--system.dtype={dtype}",
               f"--system.compile={str(compile_model).lower()}", f"--train.max_iters={iters}",
               f"--train.lr_decay_iters={iters}", f"--train.warmup_iters={max(1, iters // 10)}",
               f"--train.eval_interval={iters}", "--train.eval_iters=5", f"--train.log_interval={max(1, iters // 4)}",
               f"--data.dir={out / 'char'}", f"--run.results_dir={results_dir}"]
    if quick:  # gpu.yaml's 6 x 384 model at batch 64 x 256 takes minutes per few steps on a CPU
        command += ["--model.n_layer=2", "--model.block_size=64", "--train.batch_size=8"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"passed": False, "error": proc.stderr[-2000:]}
    summary = json.loads(next(results_dir.glob("*/summary.json")).read_text())
    return {"passed": summary["best_val_loss"] < math.log(65), "best_val_loss": summary["best_val_loss"],
            "tokens_per_s": summary["tokens_per_s"], "mfu": summary["mfu"], "peak_mem_mb": summary["peak_mem_mb"],
            "steps": summary["steps"]}


def check_attention(device: str) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32, not TF32
    torch.manual_seed(0)
    config = dict(vocab_size=512, block_size=256, n_layer=2, n_head=4, n_embd=128)
    manual = GPT(GPTConfig(**config, attention="manual")).to(device).eval()
    sdpa = GPT(GPTConfig(**config, attention="sdpa")).to(device).eval()
    sdpa.load_state_dict(manual.state_dict())
    idx = torch.randint(512, (4, 256), device=device)
    with torch.no_grad():
        fp32 = (manual(idx)[0] - sdpa(idx)[0]).abs().max().item()
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            bf16 = (manual(idx)[0].float() - sdpa(idx)[0].float()).abs().max().item()
    return {"passed": fp32 < 1e-4 and bf16 < 5e-2, "max_diff_fp32": fp32, "max_diff_bf16": bf16}


def check_flash(device: str, length: int) -> dict:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 1000, 64, device=device, requires_grad=True) for _ in range(3))  # (B, H, L, D)
    ours = flash_attention(q, k, v, causal=True, block_q=128, block_k=128)
    reference = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    grad = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
    reference_grads = torch.autograd.grad(reference, (q, k, v), grad)
    out_diff = (ours - reference).abs().max().item()
    grad_diff = max((a - b).abs().max().item() for a, b in zip(ours_grads, reference_grads))
    result = {"passed": out_diff < 1e-4 and grad_diff < 1e-3, "max_diff_out": out_diff, "max_diff_grad": grad_diff}
    if device == "cuda":
        for kind in ("naive", "tiled"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            q, k, v = (torch.randn(1, 4, length, 64, device=device, requires_grad=True) for _ in range(3))
            base = torch.cuda.memory_allocated()
            if kind == "naive":
                scores = (q @ k.transpose(-2, -1)) / 8.0  # (B, H, L, L); 8 = sqrt(D)
                causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
                y = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v
            else:
                y = flash_attention(q, k, v, causal=True, block_q=256, block_k=256)
            y.sum().backward()
            result[f"{kind}_peak_mb_at_{length}"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            del q, k, v, y
        result["passed"] = result["passed"] and result[f"tiled_peak_mb_at_{length}"] * 8 < result[f"naive_peak_mb_at_{length}"]
    return result


def check_generation(device: str, new_tokens: int) -> dict:
    rows = bench_hf(repeats=3, new_tokens=new_tokens, batches=[1, 8], device=device)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=4096, block_size=1088, n_layer=4, n_head=4, n_embd=256, attention="sdpa")).to(device).eval()
    prompt = [list(range(16))]
    rates = {}
    for use_cache in (True, False):
        start = time.perf_counter()
        generate(model, prompt, 4 * new_tokens, use_cache=use_cache)
        sync(torch.device(device))
        rates[use_cache] = 4 * new_tokens / (time.perf_counter() - start)
    return {"passed": all(r["same_tokens"] for r in rows), "ours_vs_transformers": rows,
            "cached_tokens_per_s": rates[True], "uncached_tokens_per_s": rates[False],
            "cache_speedup": rates[True] / rates[False]}


def main(argv) -> None:
    parser = argparse.ArgumentParser(prog="bench/gpu_check.py", description="Run the CUDA paths once and report figures.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="results/gpu_check", help="report folder; must not exist yet")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="where to run the checks")
    parser.add_argument("--quick", action="store_true", help="a few iterations and short lengths (for a CPU smoke run)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA device; run on a GPU machine or pass --device cpu --quick")
    iters, length, new_tokens = (6, 1024, 8) if args.quick else (200, 8192, 128)
    with report_dir(args.out) as out:
        from charlm.prepare import prepare

        prepare(str(REPO / "data/tinyshakespeare/input.txt"), str(out / "char"))
        checks = {
            "train_bf16": lambda: check_training(out, args.device, "bfloat16", iters, args.device == "cuda", args.quick),
            "train_fp16": (lambda: check_training(out, args.device, "float16", iters, False, args.quick))
            if args.device == "cuda" else None,
            "attention": lambda: check_attention(args.device),
            "flash_attention": lambda: check_flash(args.device, length),
            "generation": lambda: check_generation(args.device, new_tokens),
        }
        report = {"machine": machine_description(), "device": args.device, "checks": {}}
        for name, check in checks.items():
            if check is None:
                report["checks"][name] = {"passed": None, "skipped": "needs CUDA"}
                print(f"SKIP {name}: needs CUDA", flush=True)
                continue
            start = time.perf_counter()
            try:
                result = check()
            except Exception as exc:  # report every failure and go on to the next check
                result = {"passed": False, "error": f"{type(exc).__name__}: {exc}"}
            result["seconds"] = time.perf_counter() - start
            report["checks"][name] = result
            figures = {k: v for k, v in result.items() if k not in ("passed", "ours_vs_transformers", "error")}
            print(f"{'PASS' if result['passed'] else 'FAIL'} {name}: {figures}" + (f" | {result['error']}" if "error" in result else ""),
                  flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    failed = [name for name, r in report["checks"].items() if r["passed"] is False]
    print(f"report: {out / 'gpu_check.json'}" + (f" | failed: {', '.join(failed)}" if failed else " | all checks passed"))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    run_cli(main)
