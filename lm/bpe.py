"""Byte-level BPE: a trainer with incremental pair counts, a reference encoder, and tiktoken as the fast path.

    from lm.bpe import BPETokenizer
    tok = BPETokenizer.train(text, vocab_size=4096)                      # ids 0..255 are the bytes
    ids = tok.encode("To be, or not to be<|endoftext|>", allowed_special="all")
    tok.decode(ids)
    tok.save("bpe.json"); BPETokenizer.load("bpe.json")
    python lm/bpe.py --input data/tinyshakespeare/input.txt --vocab-size 4096 --out bpe.json

Text is first cut into chunks by a regex (the GPT-4 pattern by default: words with their leading
space, numbers of up to 3 digits, punctuation runs, newlines), so merges never cross a chunk.
Training counts each distinct chunk once with its frequency, keeps the count of every adjacent
pair and the chunks that contain it, and after each merge updates only the chunks that held the
merged pair, instead of recounting the corpus. A heap with lazy deletion finds the most frequent
pair. Ties go to the pair with the smallest token ids, so training is deterministic.

Encoding merges, inside each chunk, the adjacent pair whose merged bytes have the lowest rank
until none is mergeable; `tiktoken.Encoding` built from the same ranks runs that algorithm in Rust
(`encode`), and `encode_reference` is the plain Python version the tests compare it with.
"""

import argparse
import heapq
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import regex
import tiktoken

from common.errors import UserError, run_cli

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
FORMAT = "dl-curriculum-bpe"
VERSION = 1


class BPETokenizer:
    def __init__(self, merges: list[tuple[int, int]], pattern: str = GPT4_PATTERN, special_tokens: list[str] | None = None):
        self.merges = [tuple(pair) for pair in merges]
        self.pattern = pattern
        self.compiled = regex.compile(pattern)
        # Token bytes: ids 0..255 are single bytes, id 256 + i is merge i.
        self.vocab = [bytes([b]) for b in range(256)]
        for a, b in self.merges:
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self.ranks = {token: rank for rank, token in enumerate(self.vocab)}
        if len(self.ranks) != len(self.vocab):
            raise ValueError("two merges produce the same bytes; the merge list is corrupted")
        specials = special_tokens if special_tokens is not None else [ENDOFTEXT]
        self.special_tokens = {name: len(self.vocab) + i for i, name in enumerate(specials)}
        self.encoding = tiktoken.Encoding(
            name=f"bpe{self.vocab_size}", pat_str=pattern, mergeable_ranks=self.ranks, special_tokens=self.special_tokens
        )

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(self.special_tokens)

    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = GPT4_PATTERN, special_tokens: list[str] | None = None,
              log=None) -> "BPETokenizer":
        """Learn vocab_size - 256 - len(special_tokens) merges from text."""
        specials = special_tokens if special_tokens is not None else [ENDOFTEXT]
        n_merges = vocab_size - 256 - len(specials)
        if n_merges < 0:
            raise ValueError(f"vocab_size {vocab_size} is smaller than 256 bytes plus {len(specials)} special tokens")
        compiled = regex.compile(pattern)

        # Distinct chunks with their counts; special tokens separate documents and are never merged.
        chunk_counts = Counter()
        for part in split_on_specials(text, specials):
            chunk_counts.update(compiled.findall(part))
        words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
        counts = list(chunk_counts.values())

        pair_counts: dict[tuple[int, int], int] = defaultdict(int)
        pair_words: dict[tuple[int, int], set[int]] = defaultdict(set)
        for w, symbols in enumerate(words):
            for pair in zip(symbols, symbols[1:]):
                pair_counts[pair] += counts[w]
                pair_words[pair].add(w)
        heap = [(-count, pair) for pair, count in pair_counts.items()]
        heapq.heapify(heap)

        merges = []
        next_id = 256
        while len(merges) < n_merges and heap:
            neg_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -neg_count or neg_count == 0:
                continue  # stale heap entry: the count changed after it was pushed
            merges.append(pair)
            changed: set[tuple[int, int]] = set()
            for w in list(pair_words[pair]):
                symbols = words[w]
                for old in zip(symbols, symbols[1:]):
                    pair_counts[old] -= counts[w]
                    changed.add(old)
                    pair_words[old].discard(w)
                merged = merge_pair(symbols, pair, next_id)
                words[w] = merged
                for new in zip(merged, merged[1:]):
                    pair_counts[new] += counts[w]
                    pair_words[new].add(w)
                    changed.add(new)
            for p in changed:
                if pair_counts[p] > 0:
                    heapq.heappush(heap, (-pair_counts[p], p))
                else:
                    pair_counts.pop(p, None)
                    pair_words.pop(p, None)
            next_id += 1
            if log is not None and len(merges) % 500 == 0:
                log(f"merge {len(merges)}/{n_merges}: {pair} -> {next_id - 1} (count {-neg_count})")
        if len(merges) < n_merges and log is not None:
            log(f"the text allows only {len(merges)} merges, fewer than the {n_merges} requested")
        return cls(merges, pattern, specials)

    def encode(self, text: str, allowed_special="none") -> list[int]:
        """Encode with tiktoken. allowed_special: "none", "all" or a set of special-token strings.

        A special token in the text that is not allowed raises ValueError instead of being split
        into ordinary bytes silently.
        """
        allowed = self._allowed(allowed_special)
        return self.encoding.encode(text, allowed_special=allowed, disallowed_special=set(self.special_tokens) - allowed)

    def encode_reference(self, text: str, allowed_special="none") -> list[int]:
        """Compute the ids of encode() in plain Python: lowest-rank pair first inside each chunk."""
        allowed = self._allowed(allowed_special)
        for name in set(self.special_tokens) - allowed:
            if name in text:
                raise ValueError(f"text contains the special token {name!r}; pass allowed_special to encode it")
        ids = []
        for part in split_on_specials(text, sorted(allowed), keep=True):
            if part in allowed:
                ids.append(self.special_tokens[part])
                continue
            for chunk in self.compiled.findall(part):
                ids.extend(self._encode_chunk(chunk.encode("utf-8")))
        return ids

    def _allowed(self, allowed_special) -> set[str]:
        if allowed_special == "all":
            return set(self.special_tokens)
        if allowed_special == "none":
            return set()
        return set(allowed_special)

    def _encode_chunk(self, data: bytes) -> list[int]:
        parts = [bytes([b]) for b in data]
        while len(parts) > 1:
            best_rank, best_i = None, None
            for i in range(len(parts) - 1):
                rank = self.ranks.get(parts[i] + parts[i + 1])
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best_i = rank, i
            if best_i is None:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        return [self.ranks[p] for p in parts]

    def decode_bytes(self, ids: list[int]) -> bytes:
        inverse = {i: name.encode("utf-8") for name, i in self.special_tokens.items()}
        return b"".join(inverse[i] if i in inverse else self.vocab[i] for i in ids)

    def decode(self, ids: list[int]) -> str:
        """Decode to text; bytes that do not form valid UTF-8 (a cut multi-byte character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def save(self, path) -> None:
        payload = {"format": FORMAT, "version": VERSION, "pattern": self.pattern,
                   "special_tokens": list(self.special_tokens), "merges": [list(m) for m in self.merges]}
        Path(path).write_text(json.dumps(payload) + "\n")

    @classmethod
    def load(cls, path) -> "BPETokenizer":
        payload = json.loads(Path(path).read_text())
        if payload.get("format") != FORMAT or payload.get("version") != VERSION:
            raise ValueError(f"{path} is not a {FORMAT} version {VERSION} file (format {payload.get('format')!r}, "
                             f"version {payload.get('version')!r})")
        return cls([tuple(m) for m in payload["merges"]], payload["pattern"], payload["special_tokens"])


def merge_pair(symbols: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of pair, left to right, by new_id."""
    out = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def split_on_specials(text: str, specials, keep: bool = False) -> list[str]:
    """Cut text at special-token strings; with keep=True the specials stay in the list as their own parts."""
    if not specials:
        return [text]
    pattern = "(" + "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    parts = regex.split(pattern, text)
    return [p for p in parts if p] if keep else [p for p in parts if p and p not in specials]


def main(argv) -> None:
    parser = argparse.ArgumentParser(prog="lm/bpe.py", description="Train a byte-level BPE tokenizer on a text file.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input", default="data/tinyshakespeare/input.txt", help="UTF-8 text file to train on")
    parser.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size including 256 bytes and <|endoftext|>")
    parser.add_argument("--pattern", default="gpt4", choices=("gpt2", "gpt4"), help="pre-split regex")
    parser.add_argument("--out", default="bpe.json", help="where to save the tokenizer (JSON)")
    args = parser.parse_args(argv)
    if not Path(args.input).is_file():
        raise UserError(f"--input {args.input} is not a file; pass a UTF-8 text file")
    text = Path(args.input).read_text(encoding="utf-8")
    start = time.perf_counter()
    try:
        tok = BPETokenizer.train(text, args.vocab_size, GPT2_PATTERN if args.pattern == "gpt2" else GPT4_PATTERN, log=print)
    except ValueError as exc:
        raise UserError(f"--vocab-size {args.vocab_size}: {exc}") from None
    seconds = time.perf_counter() - start
    ids = tok.encode(text)
    print(f"trained {tok.vocab_size} tokens in {seconds:.2f} s; {len(text.encode('utf-8')) / len(ids):.2f} bytes per token")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tok.save(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    run_cli(main)
