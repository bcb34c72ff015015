"""Tokenize text files or JSONL into packed token shards for lm/train.py.

    python lm/prepare.py --input data/tinyshakespeare/input.txt --text-docs paragraph \\
        --tokenizer bpe.json --out-dir data/tinyshakespeare/bpe4096
    python lm/prepare.py --input corpus/part-*.jsonl --tokenizer gpt2 --out-dir data/corpus_gpt2 --workers 8

A document is a JSONL line's `text` field, a whole text file, or (with --text-docs paragraph) a
block of a text file between blank lines. The train/val split is by document. With --val-split
random, each document goes to val with probability --val-fraction, drawn in input order from a
generator seeded by --seed, so the same inputs always split the same way. With --val-split last,
the last --val-fraction of the documents go to val, which holds out the end of one long text. Within a split the documents are packed
back to back in input order, each preceded by one <|endoftext|>, and the stream is cut into
shards of --shard-tokens ids (lm/tokens.py describes the file format). Worker processes
tokenize batches of documents; the main process writes their results in order, so the output
does not depend on the number of workers. The folder appears only when it is complete.
"""

import argparse
import itertools
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from common.errors import UserError, run_cli
from lm.tokens import id_dtype, load_tokenizer, write_meta, write_token_file

ENDOFTEXT = "<|endoftext|>"
DOCS_PER_TASK = 256  # documents a worker tokenizes per task: large enough to hide the inter-process cost


def iter_documents(paths: list[Path], text_docs: str):
    """Yield the documents of the input files in order (empty documents are skipped)."""
    for path in paths:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise UserError(f"{path}:{line_no} is not valid JSON ({exc.msg}); each line must be one JSON object") from None
                    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                        raise UserError(f"{path}:{line_no} has no string field \"text\"; each line must look like "
                                        f"{{\"text\": \"...\"}}")
                    if record["text"]:
                        yield record["text"]
        else:
            text = path.read_text(encoding="utf-8")
            if text_docs == "paragraph":
                # Newlines at the edges of a block belong to the separator, which <|endoftext|> replaces.
                parts = [part.strip("\n") for part in re.split(r"\n[ \t]*\n", text)]
            else:
                parts = [text]
            for part in parts:
                if part.strip():
                    yield part


_worker_tokenizer = None


def init_worker(data_dir: str, spec: dict) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(data_dir, spec)


def encode_batch(texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(_worker_tokenizer.encode_ordinary(t), dtype=np.int64) for t in texts]


class ShardWriter:
    """Packs documents of one split into token files of exactly shard_tokens ids (the last one shorter)."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int, eot_id: int, dtype: np.dtype):
        self.out_dir, self.split, self.shard_tokens, self.eot_id, self.dtype = out_dir, split, shard_tokens, eot_id, dtype
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.files: list[str] = []
        self.tokens = 0
        self.documents = 0

    def add(self, ids: np.ndarray) -> None:
        self.pending.append(np.array([self.eot_id], dtype=np.int64))
        self.pending.append(ids)
        self.pending_tokens += 1 + len(ids)
        self.documents += 1
        while self.pending_tokens >= self.shard_tokens:
            stream = np.concatenate(self.pending)
            self._write(stream[: self.shard_tokens])
            self.pending = [stream[self.shard_tokens :]]
            self.pending_tokens = len(self.pending[0])

    def close(self) -> None:
        if self.pending_tokens:
            self._write(np.concatenate(self.pending))
        self.pending, self.pending_tokens = [], 0

    def _write(self, ids: np.ndarray) -> None:
        name = f"{self.split}_{len(self.files):06d}.bin"
        write_token_file(self.out_dir / name, ids.astype(self.dtype))
        self.files.append(name)
        self.tokens += len(ids)


def prepare(inputs: list[str], tokenizer: str, out_dir: str, val_fraction: float = 0.1, seed: int = 1337,
            shard_tokens: int = 100_000_000, workers: int = 1, text_docs: str = "file", val_split: str = "random",
            log=print) -> dict:
    """Write the shards and meta.json into out_dir (which must not hold files yet); return the meta."""
    paths = [Path(p) for p in inputs]
    for path in paths:
        if not path.is_file():
            raise UserError(f"input {path} is not a file; pass text files or .jsonl files with a \"text\" field")
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction is {val_fraction}, must be in (0, 1)")
    if shard_tokens <= 0 or workers <= 0:
        raise UserError(f"--shard-tokens ({shard_tokens}) and --workers ({workers}) must be positive")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out-dir {out} already exists and is not empty; pass a new folder so nothing is overwritten")

    if tokenizer == "gpt2":
        spec = source = {"kind": "tiktoken", "name": "gpt2"}
    elif Path(tokenizer).is_file():
        spec = {"kind": "bpe", "file": "tokenizer.json"}  # the copy inside the data folder
        source = {"kind": "bpe", "file": str(Path(tokenizer).resolve())}
    else:
        raise UserError(f"--tokenizer {tokenizer} is neither a file written by lm/bpe.py nor 'gpt2'")
    try:
        encoding = load_tokenizer(".", source)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    try:
        eot_id = encoding.encode_single_token(ENDOFTEXT)
    except KeyError:
        raise UserError(f"tokenizer {tokenizer} has no {ENDOFTEXT} token to separate documents; train it with that "
                        f"special token (lm/bpe.py adds it by default)") from None

    # Build in a side folder and rename it at the end: an interrupted run never leaves a half-written data folder.
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if spec["kind"] == "bpe":
        shutil.copyfile(tokenizer, partial / "tokenizer.json")
    try:
        meta = pack(paths, text_docs, val_split, val_fraction, seed, shard_tokens, workers, partial, spec, encoding,
                    eot_id, log)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    write_meta(partial, meta)
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(partial, out)
    return meta


def pack(paths, text_docs, val_split, val_fraction, seed, shard_tokens, workers, partial: Path, spec: dict, encoding,
         eot_id: int, log) -> dict:
    """Tokenize every document and write the shards of both splits into partial; return the meta."""
    dtype = id_dtype(encoding.n_vocab)
    writers = {split: ShardWriter(partial, split, shard_tokens, eot_id, dtype) for split in ("train", "val")}
    rng = np.random.default_rng(seed)
    if val_split == "last":
        n_docs = sum(1 for _ in iter_documents(paths, text_docs))
        first_val = n_docs - max(1, round(n_docs * val_fraction)) if n_docs > 1 else n_docs

    def split_of(index: int) -> str:
        if val_split == "last":
            return "val" if index >= first_val else "train"
        return "val" if rng.random() < val_fraction else "train"

    def tasks():
        """Batches of (split of each document, texts), the split drawn here so it never depends on the workers."""
        batch, splits = [], []
        for index, text in enumerate(iter_documents(paths, text_docs)):
            batch.append(text)
            splits.append(split_of(index))
            if len(batch) == DOCS_PER_TASK:
                yield splits, batch
                batch, splits = [], []
        if batch:
            yield splits, batch

    start = last_report = time.perf_counter()
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=init_worker, initargs=(str(partial), spec))
    else:
        init_worker(str(partial), spec)
    try:
        # A few tasks per worker at a time, so memory stays bounded however large the corpus is.
        task_iter = tasks()
        while window := list(itertools.islice(task_iter, 4 * workers)):
            texts = [batch for _, batch in window]
            encoded = pool.map(encode_batch, texts) if pool is not None else [encode_batch(t) for t in texts]
            for (splits, _), batch_ids in zip(window, encoded):
                for split, ids in zip(splits, batch_ids):
                    writers[split].add(ids)
            now = time.perf_counter()
            if now - last_report > 2:
                tokens = sum(w.tokens + w.pending_tokens for w in writers.values())
                docs = sum(w.documents for w in writers.values())
                log(f"prepare: {docs:,} documents | {tokens:,} tokens | {tokens / (now - start):,.0f} tokens/s")
                last_report = now
    finally:
        if pool is not None:
            pool.terminate()
    for writer in writers.values():
        writer.close()
    for split, writer in writers.items():
        if writer.documents == 0:
            raise UserError(f"no document went to {split} ({writers['train'].documents + writers['val'].documents} "
                            f"documents, --val-fraction {val_fraction}); give more documents (for one text file, "
                            f"--text-docs paragraph) or change --val-fraction")

    meta = {
        "vocab_size": encoding.n_vocab, "eot_id": eot_id, "dtype": dtype.name, "tokenizer": spec,
        "splits": {split: {"files": w.files, "tokens": w.tokens, "documents": w.documents} for split, w in writers.items()},
        "sources": [{"path": str(p), "bytes": p.stat().st_size} for p in paths],
        "val_fraction": val_fraction, "val_split": val_split, "seed": seed, "text_docs": text_docs,
        "shard_tokens": shard_tokens,
    }
    seconds = time.perf_counter() - start
    tokens = sum(w.tokens for w in writers.values())
    source_mb = sum(s["bytes"] for s in meta["sources"]) / 1e6
    log(f"done: {tokens:,} tokens ({meta['splits']['train']['tokens']:,} train, {meta['splits']['val']['tokens']:,} val) "
        f"from {sum(w.documents for w in writers.values()):,} documents in {seconds:.1f} s "
        f"({source_mb / seconds:.2f} MB/s with {workers} worker{'s' if workers > 1 else ''})")
    return meta


def main(argv) -> None:
    parser = argparse.ArgumentParser(prog="lm/prepare.py", description="Tokenize documents into packed token shards.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="text files, or .jsonl files whose lines have a \"text\" field")
    parser.add_argument("--tokenizer", required=True, help="a tokenizer JSON written by lm/bpe.py, or 'gpt2' (tiktoken's, from its cache)")
    parser.add_argument("--out-dir", required=True, help="new folder for the shards and meta.json")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of the documents that go to val")
    parser.add_argument("--val-split", default="random", choices=("random", "last"),
                        help="which documents go to val: a seeded random draw per document, or the last ones")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the random train/val draw")
    parser.add_argument("--shard-tokens", type=int, default=100_000_000, help="ids per shard file")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="tokenizer processes (1 = tokenize in this process)")
    parser.add_argument("--text-docs", default="file", choices=("file", "paragraph"),
                        help="what a document is in a text file: the whole file, or each block between blank lines")
    args = parser.parse_args(argv)
    prepare(args.input, args.tokenizer, args.out_dir, args.val_fraction, args.seed, args.shard_tokens, args.workers,
            args.text_docs, args.val_split, log=lambda line: print(line, file=sys.stderr, flush=True))


if __name__ == "__main__":
    run_cli(main)
