"""Character-level data: a vocabulary of the characters in a text, a train/val split, uint16 token files.

    python charlm/prepare.py                                   # tiny Shakespeare -> data/tinyshakespeare/char/
    python charlm/prepare.py --input my.txt --out-dir data/my_char --val-fraction 0.1

Writes train.bin and val.bin (raw little-endian uint16 ids, one per character) and meta.json
(vocab_size and the characters in id order). The split is by position: the first 90% of the text
trains, the last 10% validates, so no validation text is seen in training.
"""

import argparse
import json
from pathlib import Path

import numpy as np


def prepare(input_path: str, out_dir: str, val_fraction: float = 0.1) -> dict:
    """Build the vocabulary and write the token files; return the contents of meta.json."""
    text = Path(input_path).read_text(encoding="utf-8")
    chars = sorted(set(text))
    if len(chars) > 2**16:
        raise ValueError(f"{input_path} has {len(chars)} distinct characters, more than uint16 ids can hold")
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[ch] for ch in text], dtype="<u2")
    split = int(len(ids) * (1 - val_fraction))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids[:split].tofile(out / "train.bin")
    ids[split:].tofile(out / "val.bin")
    meta = {"vocab_size": len(chars), "chars": chars, "train_tokens": int(split), "val_tokens": int(len(ids) - split),
            "source": str(input_path)}
    (out / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
    return meta


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="charlm/prepare.py", description="Prepare character-level token files.")
    parser.add_argument("--input", default="data/tinyshakespeare/input.txt", help="UTF-8 text file")
    parser.add_argument("--out-dir", default="data/tinyshakespeare/char", help="folder for train.bin, val.bin, meta.json")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of the text, from the end, used for validation")
    args = parser.parse_args(argv)
    meta = prepare(args.input, args.out_dir, args.val_fraction)
    print(f"{meta['vocab_size']} characters | {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens -> {args.out_dir}")


if __name__ == "__main__":
    main()
