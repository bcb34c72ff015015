"""Token files and the tokenizer of a data folder: what lm/train.py, lm/eval.py and charlm/sample.py read.

A token file is a 32-byte header followed by the ids as little-endian unsigned integers:

    offset 0   8 bytes   magic b"DLTOKENS"
    offset 8   uint32    format version (1)
    offset 12  uint32    bytes per id: 2 (uint16) or 4 (uint32, for vocabularies above 65,536)
    offset 16  uint64    number of ids
    offset 24  8 bytes   zero

so a reader can check that the file is complete and memory-map the ids without parsing them.
A data folder contains the token files of each split and a meta.json that names them and the
tokenizer that made them:

    {"format": "dl-curriculum-tokens", "version": 1, "vocab_size": 4096, "eot_id": 4095,
     "tokenizer": {"kind": "bpe", "file": "tokenizer.json"},      # or {"kind": "char", "chars": [...]},
                                                                  # or {"kind": "tiktoken", "name": "gpt2"}
     "splits": {"train": {"files": ["train_000000.bin"], "tokens": ..., "documents": ...}, "val": {...}}}
"""

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

MAGIC = b"DLTOKENS"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")  # magic, version, bytes per id, count, padding: 32 bytes
META_FORMAT = "dl-curriculum-tokens"

# The two files tiktoken's "gpt2" encoding reads; tiktoken caches each under the SHA-1 of its URL.
GPT2_FILES = ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
              "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json")


def id_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits in it, else uint32."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def write_token_file(path, ids: np.ndarray) -> None:
    """Write ids (a uint16 or uint32 array) with the header; atomic, so a reader never sees half a file."""
    ids = np.ascontiguousarray(ids)
    if ids.dtype not in (np.dtype("<u2"), np.dtype("<u4")):
        raise ValueError(f"token ids must be little-endian uint16 or uint32, got {ids.dtype}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, ids.dtype.itemsize, len(ids)))
        f.write(ids.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_token_file(path) -> np.ndarray:
    """Memory-map the ids of a token file after checking its header and its length."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(HEADER.size)
    if len(raw) < HEADER.size or raw[:8] != MAGIC:
        raise ValueError(f"{path} is not a token file (no {MAGIC.decode()} header); prepare the data again")
    _, version, itemsize, count = HEADER.unpack(raw)
    if version != VERSION or itemsize not in (2, 4):
        raise ValueError(f"{path} has format version {version} with {itemsize}-byte ids; this code reads "
                         f"version {VERSION} with 2- or 4-byte ids")
    expected = HEADER.size + count * itemsize
    if path.stat().st_size != expected:
        raise ValueError(f"{path} has {path.stat().st_size} bytes but its header expects {expected}; the file is "
                         f"truncated or corrupt, prepare the data again")
    if count == 0:
        return np.zeros(0, dtype=f"<u{itemsize}")
    return np.memmap(path, dtype=f"<u{itemsize}", mode="r", offset=HEADER.size, shape=(count,))


def read_meta(data_dir) -> dict:
    """Read meta.json of a data folder and check that this code reads its format."""
    path = Path(data_dir) / "meta.json"
    meta = json.loads(path.read_text())
    if meta.get("format") != META_FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path} is format {meta.get('format')!r} version {meta.get('version')!r}, not "
                         f"{META_FORMAT!r} version {VERSION}; prepare the data again")
    return meta


def write_meta(data_dir, meta: dict) -> None:
    path = Path(data_dir) / "meta.json"
    tmp = path.with_name("meta.json.tmp")
    tmp.write_text(json.dumps({"format": META_FORMAT, "version": VERSION, **meta}, ensure_ascii=False, indent=1) + "\n")
    os.replace(tmp, path)


def read_split(data_dir, split: str) -> list[np.ndarray]:
    """Return the memory-mapped token files of one split, in order."""
    meta = read_meta(data_dir)
    if split not in meta["splits"]:
        raise ValueError(f"{data_dir} has no split {split!r}; it has {sorted(meta['splits'])}")
    return [read_token_file(Path(data_dir) / name) for name in meta["splits"][split]["files"]]


class CharTokenizer:
    """Characters to ids in the order of a fixed list; the interface is the subset of tiktoken.Encoding we use."""

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.n_vocab = len(chars)

    def encode_ordinary(self, text: str) -> list[int]:
        unknown = sorted({ch for ch in text if ch not in self.stoi})
        if unknown:
            raise ValueError(f"text has characters outside the vocabulary: {unknown!r}; use characters of the training text")
        return [self.stoi[ch] for ch in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def decode_single_token_bytes(self, token: int) -> bytes:
        return self.chars[token].encode("utf-8")


def gpt2_encoding():
    """Load tiktoken's GPT-2 encoding from its cache; never downloads, and raises with the way to provide missing files."""
    import tiktoken

    cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
                 or os.path.join(tempfile.gettempdir(), "data-gym-cache"))
    missing = [url for url in GPT2_FILES if not (cache / hashlib.sha1(url.encode()).hexdigest()).is_file()]
    if missing:
        raise FileNotFoundError(
            f"tiktoken's gpt2 files are not in its cache {cache}: on a machine with internet access run "
            f"python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\", then copy that cache folder here and "
            f"set TIKTOKEN_CACHE_DIR to it")
    return tiktoken.get_encoding("gpt2")


def load_tokenizer(data_dir, spec: dict | None = None):
    """Load the tokenizer that meta.json names: an object with encode_ordinary, decode, decode_single_token_bytes, n_vocab."""
    spec = spec if spec is not None else read_meta(data_dir)["tokenizer"]
    if spec["kind"] == "char":
        return CharTokenizer(spec["chars"])
    if spec["kind"] == "bpe":
        from lm.bpe import BPETokenizer
        return BPETokenizer.load(Path(data_dir) / spec["file"]).encoding
    if spec["kind"] == "tiktoken" and spec["name"] == "gpt2":
        return gpt2_encoding()
    raise ValueError(f"unknown tokenizer {spec} in {data_dir}/meta.json")


def token_byte_lengths(tokenizer, eot_id: int | None = None) -> np.ndarray:
    """UTF-8 bytes of each id, for bits per byte; the document separator is not text and counts 0 bytes."""
    lengths = np.array([len(tokenizer.decode_single_token_bytes(i)) for i in range(tokenizer.n_vocab)], dtype=np.int64)
    if eot_id is not None:
        lengths[eot_id] = 0
    return lengths
