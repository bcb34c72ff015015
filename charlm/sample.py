"""Generate text from a checkpoint of charlm/train.py or lm/train.py.

    python charlm/sample.py --run results/charlm_cpu_20260101-120000 --prompt "ROMEO:" --num-samples 3
    python charlm/sample.py --run results/<run> --temperature 0            # greedy
    python charlm/sample.py --run results/<run> --top-k 10 --seed 7 --max-new-tokens 300

Loads checkpoints/best.pt (lowest validation loss) or --checkpoint, and the tokenizer named by
the meta.json of the run's data folder (characters, our BPE or GPT-2), and prints each sample
followed by a separator line. With no --prompt, a model trained on documents separated by
<|endoftext|> starts from that token, as at the start of a document; a character model starts
from a newline.
"""

import argparse

import torch

from common.errors import UserError, run_cli
from lm.runs import open_run


def sample_run(run, prompt: str = "", num_samples: int = 2, max_new_tokens: int = 200, temperature: float = 0.8,
               top_k: int | None = None, top_p: float | None = None, seed: int = 1337, checkpoint: str = "best.pt") -> list[str]:
    """Return num_samples continuations of prompt, each starting with the prompt text."""
    opened = open_run(run, checkpoint)
    model, tokenizer, meta = opened.model, opened.tokenizer, opened.meta
    try:
        prompt_ids = tokenizer.encode_ordinary(prompt)
    except ValueError as exc:
        raise UserError(f"prompt {prompt!r}: {exc}") from None
    if not prompt_ids:
        prompt_ids = [meta["eot_id"]] if meta.get("eot_id") is not None else tokenizer.encode_ordinary("\n")
    prompt_tensor = torch.tensor([prompt_ids], dtype=torch.long)  # (1, prompt length)
    generator = torch.Generator().manual_seed(seed)
    samples = []
    try:
        for _ in range(num_samples):
            out = model.generate(prompt_tensor, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                 generator=generator)
            samples.append(prompt + tokenizer.decode(out[0, len(prompt_ids):].tolist()))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return samples


def main(argv) -> None:
    parser = argparse.ArgumentParser(prog="charlm/sample.py", description="Sample text from a trained GPT.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory written by charlm/train.py or lm/train.py")
    parser.add_argument("--checkpoint", default="best.pt", help="file in RUN/checkpoints to load (best.pt or last.pt)")
    parser.add_argument("--prompt", default="", help="text to continue (a character model knows only the characters of its training text)")
    parser.add_argument("--num-samples", type=int, default=2, help="independent samples to print")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate per sample")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 picks the argmax")
    parser.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="sample only from the smallest set with probability >= p")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the sampling generator")
    args = parser.parse_args(argv)
    for text in sample_run(args.run, args.prompt, args.num_samples, args.max_new_tokens, args.temperature, args.top_k,
                           args.top_p, args.seed, args.checkpoint):
        print(text)
        print("-" * 40)


if __name__ == "__main__":
    run_cli(main)
