"""Character-level data: a vocabulary of the characters in a text, a train/val split, uint16 token files.

    python charlm/prepare.py                                   # tiny Shakespeare -> data/tinyshakespeare/char/
    python charlm/prepare.py --input my.txt --out-dir data/my_char --val-fraction 0.1

Writes train.bin and val.bin (uint16 ids, one per character, in the token-file format of
lm/tokens.py) and meta.json (the characters in id order are the tokenizer). The split is by
position: the first 90% of the text trains, the last 10% validates, so no validation text is
seen in training.
"""

import argparse
from pathlib import Path

import numpy as np

from lm.tokens import write_meta, write_token_file


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
    write_token_file(out / "train.bin", ids[:split])
    write_token_file(out / "val.bin", ids[split:])
    meta = {"vocab_size": len(chars), "eot_id": None, "dtype": "uint16", "tokenizer": {"kind": "char", "chars": chars},
            "splits": {"train": {"files": ["train.bin"], "tokens": int(split), "documents": 1},
                       "val": {"files": ["val.bin"], "tokens": int(len(ids) - split), "documents": 1}},
            "sources": [{"path": str(input_path), "bytes": Path(input_path).stat().st_size}], "val_fraction": val_fraction}
    write_meta(out, meta)
    return meta


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="charlm/prepare.py", description="Prepare character-level token files.")
    parser.add_argument("--input", default="data/tinyshakespeare/input.txt", help="UTF-8 text file")
    parser.add_argument("--out-dir", default="data/tinyshakespeare/char", help="folder for train.bin, val.bin, meta.json")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of the text, from the end, used for validation")
    args = parser.parse_args(argv)
    meta = prepare(args.input, args.out_dir, args.val_fraction)
    tokens = {split: meta["splits"][split]["tokens"] for split in ("train", "val")}
    print(f"{meta['vocab_size']} characters | {tokens['train']:,} train / {tokens['val']:,} val tokens -> {args.out_dir}")


if __name__ == "__main__":
    main()
