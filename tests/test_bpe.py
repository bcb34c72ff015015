"""Byte-level BPE: the incremental trainer against a full recount, our encoder against tiktoken, round trips."""

from collections import Counter

import pytest
import regex

from lm.bpe import ENDOFTEXT, GPT2_PATTERN, GPT4_PATTERN, BPETokenizer, merge_pair
from tests.conftest import REPO

SHAKESPEARE = (REPO / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
SAMPLES = [
    "Hello, world! It's 2026 and we're testing 12345 tokens.",
    "Café, naïve, façade, Ångström, über, résumé",
    "Emoji: 🙂🚀 and a family 👨‍👩‍👧 plus flags 🇨🇳🇫🇷",
    "中文测试：深度学习从零开始。日本語のテキスト、한국어 텍스트",
    "tabs\tand  double  spaces\n\nnew lines\r\nwindows line\n   indented\n",
    "",
    " ",
    "ends with spaces   ",
]


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    return BPETokenizer.train(SHAKESPEARE[:200_000], vocab_size=1024)


def naive_train(text: str, n_merges: int, pattern: str) -> list[tuple[int, int]]:
    """Recount every pair over the whole corpus before each merge: slow, but obviously right."""
    words = Counter(regex.findall(pattern, text))
    sequences = {w: list(w.encode("utf-8")) for w in words}
    merges = []
    for i in range(n_merges):
        counts = Counter()
        for w, seq in sequences.items():
            for pair in zip(seq, seq[1:]):
                counts[pair] += words[w]
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # the same tie-break as the trainer
        merges.append(best)
        sequences = {w: merge_pair(seq, best, 256 + i) for w, seq in sequences.items()}
    return merges


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN])
def test_incremental_trainer_equals_full_recount(pattern):
    text = SHAKESPEARE[:20_000]
    fast = BPETokenizer.train(text, vocab_size=256 + 1 + 150, pattern=pattern)
    assert fast.merges == naive_train(text, 150, pattern)


def test_first_merge_is_most_frequent_pair():
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=256 + 1 + 1, pattern=r"\S+")
    assert tok.merges == [(97, 97)]


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.decode(tokenizer.encode_reference(text)) == text


@pytest.mark.parametrize("text", SAMPLES + [SHAKESPEARE[200_000:230_000]])
def test_reference_encoder_equals_tiktoken(tokenizer, text):
    assert tokenizer.encode_reference(text) == tokenizer.encode(text)


@pytest.mark.parametrize("text", SAMPLES)
def test_token_bytes_add_up_to_utf8_length(tokenizer, text):
    ids = tokenizer.encode(text)
    assert sum(len(tokenizer.vocab[i]) for i in ids) == len(text.encode("utf-8"))


def test_endoftext_is_one_token_when_allowed(tokenizer):
    eot = tokenizer.special_tokens[ENDOFTEXT]
    assert eot == tokenizer.vocab_size - 1
    for encode in (tokenizer.encode, tokenizer.encode_reference):
        ids = encode(f"first doc{ENDOFTEXT}second doc", allowed_special="all")
        assert ids.count(eot) == 1
        assert tokenizer.decode(ids) == f"first doc{ENDOFTEXT}second doc"


def test_endoftext_raises_when_not_allowed(tokenizer):
    for encode in (tokenizer.encode, tokenizer.encode_reference):
        with pytest.raises(ValueError):
            encode(f"text {ENDOFTEXT} more")


def test_save_and_load(tmp_path, tokenizer):
    tokenizer.save(tmp_path / "bpe.json")
    loaded = BPETokenizer.load(tmp_path / "bpe.json")
    assert loaded.merges == tokenizer.merges
    assert loaded.encode(SAMPLES[0]) == tokenizer.encode(SAMPLES[0])


def test_load_rejects_other_formats(tmp_path):
    (tmp_path / "other.json").write_text('{"format": "something-else", "version": 1}')
    with pytest.raises(ValueError, match="is not a dl-curriculum-bpe version 1 file"):
        BPETokenizer.load(tmp_path / "other.json")


def test_training_is_deterministic():
    a = BPETokenizer.train(SHAKESPEARE[:30_000], vocab_size=400)
    b = BPETokenizer.train(SHAKESPEARE[:30_000], vocab_size=400)
    assert a.merges == b.merges
    assert len(a.merges) == 400 - 257


def test_specials_are_not_merged_across():
    tok = BPETokenizer.train(f"ab{ENDOFTEXT}ab{ENDOFTEXT}ab", vocab_size=300, pattern=r"\S+")
    assert all(ENDOFTEXT.encode() not in tok.vocab[i] for i in range(len(tok.vocab)))
