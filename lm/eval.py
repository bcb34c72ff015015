"""Perplexity and bits per byte of a GPT over a token file, with a sliding window.

    python lm/eval.py --run results/charlm_cpu_20260101-120000                 # val.bin of the run's data
    python lm/eval.py --run results/<run> --window 64 --stride 32 --split train

Windows of `window` tokens start every `stride` tokens. A window predicts the token after each of
its positions, but only targets that no earlier window scored are counted, so every predictable
token (all but the first) is scored exactly once, with at least window - stride tokens of context
once the first window is past. The result is token-weighted: the total negative log-likelihood over
the number of scored tokens, never a mean of per-window means.

    perplexity    = exp(total NLL / scored tokens)
    bits per byte = total NLL / (ln 2 * UTF-8 bytes of the scored tokens)
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from common.checkpoint import load_checkpoint, load_model_state
from common.errors import UserError, run_cli
from lm.model import GPT, GPTConfig


@torch.no_grad()
def sliding_window_nll(model: GPT, tokens: torch.Tensor, window: int, stride: int) -> tuple[float, int, list[int]]:
    """Return (total NLL in nats, scored tokens, the indices of the scored targets) for a 1-D token tensor."""
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in [1, window], got stride {stride} and window {window}")
    if window > model.config.block_size:
        raise ValueError(f"window {window} exceeds the model's block_size {model.config.block_size}")
    model.eval()
    device = next(model.parameters()).device
    n = len(tokens)
    total, scored = 0.0, []
    last_scored = 0  # index of the last target scored so far; token 0 has no context and is never a target
    begin = 0
    while last_scored < n - 1:
        end = min(begin + window, n - 1)  # inputs tokens[begin:end], targets tokens[begin + 1 : end + 1]
        x = tokens[begin:end].unsqueeze(0).to(device)  # (1, T)
        y = tokens[begin + 1 : end + 1].to(device)  # (T,)
        logits, _ = model(x)
        nll = F.cross_entropy(logits[0].float(), y, reduction="none")  # (T,): target begin + 1 + i
        first_new = last_scored + 1 - (begin + 1)  # position in this window of the first unscored target
        total += nll[first_new:].double().sum().item()
        scored.extend(range(last_scored + 1, end + 1))
        last_scored = end
        begin += stride
    return total, len(scored), scored


def main(argv) -> None:
    parser = argparse.ArgumentParser(prog="lm/eval.py", description="Sliding-window perplexity of a charlm run.")
    parser.add_argument("--run", required=True, help="run directory written by charlm/train.py")
    parser.add_argument("--checkpoint", default="best.pt", help="file in RUN/checkpoints to evaluate")
    parser.add_argument("--split", default="val", choices=("train", "val"), help="token file to score")
    parser.add_argument("--window", type=int, default=0, help="tokens per window (0 = the model's block_size)")
    parser.add_argument("--stride", type=int, default=0, help="tokens between window starts (0 = half the window)")
    parser.add_argument("--max-tokens", type=int, default=0, help="score only the first N tokens (0 = all)")
    args = parser.parse_args(argv)

    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise UserError(f"run directory {run} has no config.yaml; pass a folder written by charlm/train.py")
    data_dir = Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["dir"])
    token_file = data_dir / f"{args.split}.bin"
    if not token_file.is_file():
        raise UserError(f"token file {token_file} not found; run charlm/prepare.py with the run's data settings")
    chars = json.loads((data_dir / "meta.json").read_text())["chars"]
    state = load_checkpoint(run / "checkpoints" / args.checkpoint)
    model = GPT(GPTConfig(**state["model_config"]))
    load_model_state(model, state["model"], args.checkpoint)

    tokens = torch.from_numpy(np.fromfile(token_file, dtype="<u2").astype(np.int64))
    if args.max_tokens:
        tokens = tokens[: args.max_tokens]
    window = args.window or model.config.block_size
    stride = args.stride or max(1, window // 2)
    try:
        total, count, scored = sliding_window_nll(model, tokens, window, stride)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    byte_lengths = np.array([len(ch.encode("utf-8")) for ch in chars])
    n_bytes = int(byte_lengths[tokens[scored].numpy()].sum())
    print(f"{args.split}: {count:,} tokens scored with window {window}, stride {stride} | "
          f"loss {total / count:.4f} | perplexity {math.exp(total / count):.3f} | "
          f"bits per byte {total / (math.log(2) * n_bytes):.4f}")


if __name__ == "__main__":
    run_cli(main)
