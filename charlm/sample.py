"""Generate text from a charlm checkpoint.

    python charlm/sample.py --run results/charlm_cpu_20260101-120000 --prompt "ROMEO:" --num-samples 3
    python charlm/sample.py --run results/<run> --temperature 0            # greedy
    python charlm/sample.py --run results/<run> --top-k 10 --seed 7 --max-new-tokens 300

Loads checkpoints/best.pt (lowest validation loss) or --checkpoint, and the character vocabulary
from the run's data folder (meta.json), and prints each sample after a separator line.
"""

import argparse
import json
from pathlib import Path

import torch
import yaml

from common.checkpoint import load_checkpoint, load_model_state
from common.errors import UserError, run_cli
from lm.model import GPT, GPTConfig


def main(argv) -> None:
    parser = argparse.ArgumentParser(prog="charlm/sample.py", description="Sample text from a character-level GPT.")
    parser.add_argument("--run", required=True, help="run directory written by charlm/train.py")
    parser.add_argument("--checkpoint", default="best.pt", help="file in RUN/checkpoints to load (best.pt or last.pt)")
    parser.add_argument("--prompt", default="\n", help="text to continue; every character must be in the vocabulary")
    parser.add_argument("--num-samples", type=int, default=2, help="independent samples to print")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="characters to generate per sample")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 picks the argmax")
    parser.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely characters")
    parser.add_argument("--top-p", type=float, default=None, help="sample only from the smallest set with probability >= p")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the sampling generator")
    args = parser.parse_args(argv)

    run = Path(args.run)
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"run directory {run} has no config.yaml; pass a folder written by charlm/train.py")
    config = yaml.safe_load(config_path.read_text())
    meta_path = Path(config["data"]["dir"]) / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"vocabulary {meta_path} not found; run charlm/prepare.py with the run's data settings")
    chars = json.loads(meta_path.read_text())["chars"]
    stoi = {ch: i for i, ch in enumerate(chars)}
    unknown = sorted({ch for ch in args.prompt if ch not in stoi})
    if unknown:
        raise UserError(f"prompt has characters outside the vocabulary: {unknown!r}; use characters of the training text")

    state = load_checkpoint(run / "checkpoints" / args.checkpoint)
    model = GPT(GPTConfig(**state["model_config"]))
    load_model_state(model, state["model"], args.checkpoint)
    prompt = torch.tensor([[stoi[ch] for ch in args.prompt]], dtype=torch.long)
    generator = torch.Generator().manual_seed(args.seed)
    try:
        for _ in range(args.num_samples):
            out = model.generate(prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                 top_p=args.top_p, generator=generator)
            print("".join(chars[i] for i in out[0].tolist()))
            print("-" * 40)
    except ValueError as exc:
        raise UserError(str(exc)) from None


if __name__ == "__main__":
    run_cli(main)
