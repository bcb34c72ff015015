"""Perplexity and bits per byte of a GPT over a token file, with a sliding window.

    python lm/eval.py --run results/charlm_cpu_20260101-120000                 # the val split of the run's data
    python lm/eval.py --run results/<run> --window 64 --stride 32 --split train

Windows of `window` tokens start every `stride` tokens. A window predicts the token after each of
its positions, but only targets that no earlier window scored are counted, so every predictable
token (all but the first) is scored exactly once, with at least window - stride tokens of context
once the first window is past. The result is token-weighted: the total negative log-likelihood over
the number of scored tokens, never a mean of per-window means.

    perplexity    = exp(total NLL / scored tokens)
    bits per byte = total NLL / (ln 2 * UTF-8 bytes of the scored tokens)

The token files of a split are scored as one stream, in order. Bits per byte compare models
with different tokenizers (a character model and a BPE model); the <|endoftext|> separators
count in the NLL but add no bytes, since they are not text.
"""

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import UserError, run_cli
from lm.model import GPT
from lm.runs import open_run
from lm.tokens import read_split, token_byte_lengths


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


def evaluate_run(run, checkpoint: str = "best.pt", split: str = "val", window: int = 0, stride: int = 0,
                 max_tokens: int = 0) -> dict:
    """Score a split of a run's data with a checkpoint; return loss, perplexity and bits per byte."""
    opened = open_run(run, checkpoint)
    model, data_dir = opened.model, opened.data_dir
    try:
        tokens = torch.from_numpy(np.concatenate(read_split(data_dir, split)).astype(np.int64))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the {split} tokens of {data_dir}: {exc}; prepare the data with the run's "
                        f"settings") from None
    byte_lengths = token_byte_lengths(opened.tokenizer, opened.meta.get("eot_id"))

    if max_tokens:
        tokens = tokens[:max_tokens]
    window = window or model.config.block_size
    stride = stride or max(1, window // 2)
    try:
        total, count, scored = sliding_window_nll(model, tokens, window, stride)
    except ValueError as exc:
        raise UserError(f"{exc}; pass --window at most {model.config.block_size} and --stride at most --window") from None
    n_bytes = int(byte_lengths[tokens[scored].numpy()].sum())
    return {"split": split, "tokens": count, "bytes": n_bytes, "window": window, "stride": stride,
            "loss": total / count, "perplexity": math.exp(total / count), "bits_per_byte": total / (math.log(2) * n_bytes)}


def main(argv) -> None:
    parser = argparse.ArgumentParser(prog="lm/eval.py", description="Sliding-window perplexity of a GPT run.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory written by lm/train.py or charlm/train.py")
    parser.add_argument("--checkpoint", default="best.pt", help="file in RUN/checkpoints to evaluate")
    parser.add_argument("--split", default="val", choices=("train", "val"), help="split of the run's data to score")
    parser.add_argument("--window", type=int, default=0, help="tokens per window (0 = the model's block_size)")
    parser.add_argument("--stride", type=int, default=0, help="tokens between window starts (0 = half the window)")
    parser.add_argument("--max-tokens", type=int, default=0, help="score only the first N tokens (0 = all)")
    args = parser.parse_args(argv)
    r = evaluate_run(args.run, args.checkpoint, args.split, args.window, args.stride, args.max_tokens)
    print(f"{r['split']}: {r['tokens']:,} tokens scored with window {r['window']}, stride {r['stride']} | "
          f"loss {r['loss']:.4f} | perplexity {r['perplexity']:.3f} | bits per byte {r['bits_per_byte']:.4f}")


if __name__ == "__main__":
    run_cli(main)
