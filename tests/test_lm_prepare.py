"""lm/prepare.py and lm/tokens.py: packing keeps every token once, one <|endoftext|> between documents."""

import json

import numpy as np
import pytest

from common.errors import UserError
from lm.bpe import BPETokenizer
from lm.prepare import prepare
from lm.tokens import read_meta, read_split, read_token_file, write_token_file
from tests.conftest import run_script

DOCS = ["First Citizen:\nBefore we proceed any further, hear me speak.",
        "Ça va? Très bien, merci. 你好，世界",
        "short",
        "emoji 🙂🙂 and  double  spaces\n\n\nand blank lines",
        "x" * 300,
        ] + [f"document number {i}: to be, or not to be, that is the question {i * i}" for i in range(60)]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "bpe.json"
    BPETokenizer.train("\n".join(DOCS) * 3, vocab_size=300).save(path)
    return path


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def prepare_quiet(*args, **kwargs):
    return prepare(*args, log=lambda line: None, **kwargs)


def test_every_token_once_and_one_eot_between_documents(tmp_path, tokenizer_file):
    # Shards of 37 ids cut documents in the middle; concatenated, each split must be exactly
    # <eot> doc <eot> doc ... for its documents in input order, with nothing lost or repeated.
    source = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    meta = prepare_quiet([str(source)], str(tokenizer_file), str(tmp_path / "out"), val_fraction=0.3, shard_tokens=37)
    tok = BPETokenizer.load(tokenizer_file)
    eot = meta["eot_id"]
    assert eot == tok.special_tokens["<|endoftext|>"]

    rng = np.random.default_rng(1337)
    expected = {"train": [], "val": []}
    for doc in DOCS:
        expected["val" if rng.random() < 0.3 else "train"].append(doc)
    assert expected["train"]
    assert expected["val"]
    for split in ("train", "val"):
        shards = read_split(tmp_path / "out", split)
        assert all(len(s) == 37 for s in shards[:-1]) and 0 < len(shards[-1]) <= 37
        stream = np.concatenate(shards).astype(np.int64)
        assert meta["splits"][split]["tokens"] == len(stream)
        assert meta["splits"][split]["documents"] == len(expected[split])
        want = []
        for doc in expected[split]:
            want += [eot] + tok.encode(doc)
        assert stream.tolist() == want
        # Cutting at the separators gives back the documents: exactly one <eot> between two documents.
        pieces = np.split(stream, np.flatnonzero(stream == eot))[1:]
        assert [tok.decode(p[1:].tolist()) for p in pieces] == expected[split]
        assert all(p[0] == eot and (p[1:] != eot).all() for p in pieces)


def test_workers_give_the_same_bytes(tmp_path, tokenizer_file):
    source = write_jsonl(tmp_path / "docs.jsonl", DOCS * 10)
    prepare_quiet([str(source)], str(tokenizer_file), str(tmp_path / "one"), shard_tokens=500, workers=1)
    prepare_quiet([str(source)], str(tokenizer_file), str(tmp_path / "two"), shard_tokens=500, workers=2)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_paragraph_documents_of_a_text_file(tmp_path, tokenizer_file):
    (tmp_path / "play.txt").write_text("\n\n".join(DOCS[:3]) + "\n")
    meta = prepare_quiet([str(tmp_path / "play.txt")], str(tokenizer_file), str(tmp_path / "out"),
                         val_fraction=0.5, seed=3, text_docs="paragraph")
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 3
    last = prepare_quiet([str(tmp_path / "play.txt")], str(tokenizer_file), str(tmp_path / "last"),
                         val_fraction=0.34, text_docs="paragraph", val_split="last")
    assert (last["splits"]["train"]["documents"], last["splits"]["val"]["documents"]) == (2, 1)
    val = np.concatenate(read_split(tmp_path / "last", "val")).tolist()
    assert val == [last["eot_id"]] + BPETokenizer.load(tokenizer_file).encode(DOCS[2])
    with pytest.raises(UserError, match="no document went to"):
        prepare_quiet([str(tmp_path / "play.txt")], str(tokenizer_file), str(tmp_path / "whole"), text_docs="file")
    assert not (tmp_path / "whole").exists()
    assert not (tmp_path / "whole.partial").exists()


def test_token_file_header_round_trip_and_checks(tmp_path):
    ids = np.array([0, 1, 65535], dtype="<u2")
    write_token_file(tmp_path / "a.bin", ids)
    assert read_token_file(tmp_path / "a.bin").tolist() == [0, 1, 65535]
    big = np.array([0, 70000], dtype="<u4")
    write_token_file(tmp_path / "b.bin", big)
    assert read_token_file(tmp_path / "b.bin").dtype == np.dtype("<u4")
    raw = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_token_file(tmp_path / "cut.bin")
    (tmp_path / "raw.bin").write_bytes(ids.tobytes())
    with pytest.raises(ValueError, match="not a token file"):
        read_token_file(tmp_path / "raw.bin")


def test_cli_errors_and_nothing_overwritten(tmp_path, tokenizer_file):
    source = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    out = tmp_path / "out"
    run_script(["lm/prepare.py", "--input", str(source), "--tokenizer", str(tokenizer_file), "--out-dir", str(out),
                "--workers", "1"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert read_meta(out)["splits"]["train"]["documents"] > 0
    again = run_script(["lm/prepare.py", "--input", str(source), "--tokenizer", str(tokenizer_file), "--out-dir", str(out)],
                       check=False)
    assert again.returncode == 2
    assert "already exists" in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    bad = run_script(["lm/prepare.py", "--input", str(tmp_path / "bad.jsonl"), "--tokenizer", str(tokenizer_file),
                      "--out-dir", str(tmp_path / "bad")], check=False)
    assert bad.returncode == 2
    assert "bad.jsonl:2" in bad.stderr
    assert "text" in bad.stderr
    missing = run_script(["lm/prepare.py", "--input", str(source), "--tokenizer", str(tmp_path / "nope.json"),
                          "--out-dir", str(tmp_path / "x")], check=False)
    assert missing.returncode == 2
    assert "nope.json" in missing.stderr


def test_gpt2_without_cache_says_how_to_provide_it(tmp_path, monkeypatch):
    # An empty cache folder: the tokenizer must not try to download, and the error names the fix.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty_cache"))
    source = write_jsonl(tmp_path / "docs.jsonl", DOCS[:3])
    proc = run_script(["lm/prepare.py", "--input", str(source), "--tokenizer", "gpt2", "--out-dir", str(tmp_path / "out")],
                      check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: tiktoken's gpt2 files are not in its cache")
    assert "TIKTOKEN_CACHE_DIR" in proc.stderr
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out.partial").exists()
