"""Generate text with the KV cache: one prefill pass over the prompts, then one token per pass.

    python infer/generate.py --run results/charlm_cpu_<stamp> --prompt "ROMEO:" --max-new-tokens 200
    python infer/generate.py --run results/bpe_cpu_<stamp> --prompt "KING" --prompt "QUEEN:" --temperature 0.8 --top-k 40
    python infer/generate.py --gpt2-dir models/gpt2 --prompt "The meaning of life is" --stop "<|endoftext|>"
    python infer/generate.py --run results/<run> --no-cache        # recompute the whole context every step

The prompts of a batch are left-padded to one length, so each row's newest token sits in the
same cache slot (infer/kv_cache.py). Each step picks one token per row: the argmax at
temperature 0, else a draw from the softmax of logits / temperature after the top-k and top-p
filters. A row stops at a stop token or after max_new_tokens; the batch stops when every row has.
When the cache is full (block_size slots), each row's context is cropped to its last
block_size // 2 tokens and prefilled again, so the model always gets a context that it could get
without a cache, and a token costs a full forward pass only once every block_size // 2 steps.
Without the cache (--no-cache) every step runs the model on the last block_size tokens, as
GPT.generate does. Both give the tokens of the uncached model on the same context, up to
floating-point rounding (the tests compare the logits at every step).

Streaming prints a row's text as its tokens arrive, but only whole UTF-8 characters: a token
that ends inside a multi-byte character (a piece of an emoji, say) waits for the next one.
"""

import argparse
import codecs
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from common.errors import UserError, run_cli
from infer.kv_cache import KVCache
from lm.model import GPT, filter_logits
from lm.runs import open_run
from lm.tokens import gpt2_encoding


@dataclass
class Generation:
    tokens: list[list[int]]  # the new tokens of each row, a stop token included
    finish_reasons: list[str]  # "stop" or "length" per row
    prefill_tokens: int = 0  # prompt tokens in the first forward pass, after cropping to block_size
    prefill_s: float = 0.0  # the first forward pass over the prompts
    decode_s: float = 0.0  # every later pass, re-prefills of a full cache included
    steps: list[dict] = field(default_factory=list)  # with record_steps: logits (B, V) and context starts per step

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row from logits (B, V): argmax at temperature 0, else a filtered softmax draw. Returns (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


@torch.inference_mode()  # like no_grad, and skips autograd's version counting
def generate(model: GPT, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, stop_tokens=(), generator=None,
             use_cache: bool = True, on_token=None, record_steps: bool = False) -> Generation:
    """Generate up to max_new_tokens tokens after each prompt; on_token(row, token_id) is called for each as it is picked."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature < 0:
        raise ValueError(f"temperature must be zero or positive, got {temperature}")
    model.eval()
    param = next(model.parameters())
    block = model.config.block_size
    keep = max(1, block // 2)
    B = len(prompts)
    stop_tokens = set(stop_tokens)
    sequences = [list(p) for p in prompts]  # prompt + new tokens of each row
    starts = [max(0, len(s) - block) for s in sequences]  # where each row's model context begins
    cache = KVCache(model.config, B, dtype=param.dtype, device=param.device)

    def prefill() -> torch.Tensor:
        """Write every row's context into the emptied cache; return the logits of the next token, (B, V)."""
        contexts = [s[start:] for s, start in zip(sequences, starts)]
        length = max(len(c) for c in contexts)
        pad = [length - len(c) for c in contexts]
        ids = torch.tensor([[0] * p + c for p, c in zip(pad, contexts)], device=param.device)  # (B, length); 0 pads, masked
        cache.reset(torch.tensor(pad))
        return model(ids, cache=cache, last_logits_only=True)[0][:, -1].float()

    result = Generation(tokens=[[] for _ in range(B)], finish_reasons=["length"] * B)
    done = [False] * B
    start_time = time.perf_counter()
    logits = prefill()
    result.prefill_s = time.perf_counter() - start_time
    result.prefill_tokens = sum(len(s) - start for s, start in zip(sequences, starts))
    for step in range(max_new_tokens):
        if record_steps:
            result.steps.append({"logits": logits.clone(), "starts": list(starts)})
        next_ids = sample_next(logits, temperature, top_k, top_p, generator).tolist()
        for row, token in enumerate(next_ids):
            if done[row]:
                continue
            sequences[row].append(token)
            result.tokens[row].append(token)
            if on_token is not None:
                on_token(row, token)
            if token in stop_tokens:
                done[row], result.finish_reasons[row] = True, "stop"
        if all(done) or step == max_new_tokens - 1:
            break
        if use_cache and cache.length < cache.max_len:
            # A finished row still fills its slot (with token 0) so the batch stays rectangular; its output is unused.
            fed = torch.tensor([[0 if done[r] else next_ids[r]] for r in range(B)], device=param.device)  # (B, 1)
            logits = model(fed, cache=cache, last_logits_only=True)[0][:, -1].float()
        else:
            # No cache, or a full one: crop the contexts and run the model over them from scratch.
            limit = keep if use_cache else block
            starts = [max(start, len(s) - limit) for s, start in zip(sequences, starts)]
            logits = prefill()
    result.decode_s = time.perf_counter() - start_time - result.prefill_s
    return result


class Utf8Stream:
    """Turns token ids into text as they arrive, holding back the bytes of an unfinished UTF-8 character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self.decoder.decode(self.tokenizer.decode_single_token_bytes(token))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


def load_model(args) -> tuple[GPT, object, int | None]:
    """Load the model, its tokenizer and its <|endoftext|> id (None for a character model) from --run or --gpt2-dir."""
    if args.gpt2_dir:
        if not (Path(args.gpt2_dir) / "config.json").is_file():
            raise UserError(f"--gpt2-dir {args.gpt2_dir} has no config.json; pass a folder that transformers' "
                            f"save_pretrained wrote for a GPT-2 model")
        try:
            model = GPT.from_pretrained(args.gpt2_dir, attention=args.attention or "sdpa")
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load GPT-2 weights from {args.gpt2_dir}: {exc}") from None
        try:
            tokenizer = gpt2_encoding()
        except FileNotFoundError as exc:
            raise UserError(f"the GPT-2 weights loaded, but the tokenizer did not: {exc}") from None
        return model.eval(), tokenizer, tokenizer.eot_token
    opened = open_run(args.run, args.checkpoint, args.attention)
    return opened.model, opened.tokenizer, opened.meta.get("eot_id")


def single_token(tokenizer, text: str) -> int:
    """Return the id of a text that must be exactly one token of the tokenizer (a stop token)."""
    try:
        if hasattr(tokenizer, "encode_single_token"):
            return tokenizer.encode_single_token(text)
        ids = tokenizer.encode_ordinary(text)
    except (KeyError, ValueError):
        ids = []
    if len(ids) != 1:
        raise UserError(f"--stop {text!r} is not a single token of this tokenizer; pass a text that encodes to exactly "
                        f"one token, such as '<|endoftext|>' or, for a character model, one character")
    return ids[0]


def main(argv) -> None:
    parser = argparse.ArgumentParser(prog="infer/generate.py", description="Generate text with the KV cache.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run directory written by charlm/train.py or lm/train.py")
    source.add_argument("--gpt2-dir", help="Hugging Face GPT-2 folder (config.json and weights); its tokenizer comes from tiktoken's cache")
    parser.add_argument("--checkpoint", default="best.pt", help="file in RUN/checkpoints to load")
    parser.add_argument("--prompt", action="append", help="text to continue; repeat for a batch (default: start of a document)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate per prompt")
    parser.add_argument("--temperature", type=float, default=0.0, help="softmax temperature; 0 picks the argmax (greedy)")
    parser.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="sample only from the smallest set with probability >= p")
    parser.add_argument("--stop", action="append", default=[], help="a single-token text that ends a row, e.g. '<|endoftext|>'; repeatable")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the sampling generator")
    parser.add_argument("--attention", choices=("manual", "sdpa"), help="attention implementation (default: the checkpoint's)")
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole context every step")
    parser.add_argument("--no-stream", action="store_true", help="print each text when it is complete (a batch of prompts never streams)")
    args = parser.parse_args(argv)
    if args.max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens is {args.max_new_tokens}, must be positive")

    model, tokenizer, eot_id = load_model(args)
    prompt_texts = args.prompt or [""]
    prompts = []
    for text in prompt_texts:
        try:
            ids = tokenizer.encode_ordinary(text)
        except ValueError as exc:
            raise UserError(f"prompt {text!r}: {exc}") from None
        prompts.append(ids or ([eot_id] if eot_id is not None else tokenizer.encode_ordinary("\n")))
    stop_tokens = [single_token(tokenizer, text) for text in args.stop]

    streams = [Utf8Stream(tokenizer) for _ in prompts]
    stream = len(prompts) == 1 and not args.no_stream
    if stream:
        print(prompt_texts[0], end="", flush=True)

    def on_token(row: int, token: int) -> None:
        text = streams[row].push(token)
        if stream and text:
            print(text, end="", flush=True)

    try:
        result = generate(model, prompts, args.max_new_tokens, args.temperature, args.top_k, args.top_p, stop_tokens,
                          torch.Generator().manual_seed(args.seed), use_cache=not args.no_cache, on_token=on_token)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if stream:
        print(streams[0].flush())
    else:
        for row, text in enumerate(prompt_texts):
            print(text + tokenizer.decode(result.tokens[row]))
            print("-" * 40)
    seconds = result.prefill_s + result.decode_s
    print(f"{result.new_tokens} new tokens in {seconds:.2f} s ({result.new_tokens / seconds:,.1f} tokens/s; prefill of "
          f"{result.prefill_tokens} prompt tokens in {1000 * result.prefill_s:.1f} ms) | "
          f"cache {'off' if args.no_cache else 'on'} | finished: {', '.join(result.finish_reasons)}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
