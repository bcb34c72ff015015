"""infer/kv_cache.py and infer/generate.py: cached decoding gives the uncached model's logits and tokens."""

import pytest
import torch
import yaml

from charlm.prepare import prepare as prepare_chars
from common.checkpoint import save_checkpoint
from infer.generate import Utf8Stream, generate
from lm.bpe import BPETokenizer
from lm.model import GPT, GPTConfig
from tests.conftest import run_script

ATOL = 1e-5  # float32 logits of a cached and an uncached pass differ only by summation order


def make_model(attention: str, block_size: int = 32, vocab_size: int = 50, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32, attention=attention))
    with torch.no_grad():
        model.wte.weight.mul_(20)  # spread the logits, so a rounding difference never flips an argmax
    return model.eval()


def uncached_last_logits(model: GPT, context: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([context]))[0][0, -1]


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_cached_logits_equal_uncached_every_step(attention):
    model = make_model(attention)
    prompt = [3, 14, 15, 9, 26]
    result = generate(model, [prompt], max_new_tokens=10, record_steps=True)
    tokens = result.tokens[0]
    assert len(tokens) == 10
    assert len(result.steps) == 10
    for step, record in enumerate(result.steps):
        context = prompt + tokens[:step]
        assert record["starts"] == [0]
        torch.testing.assert_close(record["logits"][0], uncached_last_logits(model, context), atol=ATOL, rtol=0)
        assert tokens[step] == int(uncached_last_logits(model, context).argmax())
    reference = model.generate(torch.tensor([prompt]), 10, temperature=0)[0, len(prompt):].tolist()
    assert tokens == reference
    assert generate(model, [prompt], max_new_tokens=10, use_cache=False).tokens[0] == reference


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_left_padded_batch_equals_rows_alone(attention):
    model = make_model(attention)
    short, long = [7, 1, 30], [2, 8, 44, 5, 19, 23, 11]
    batch = generate(model, [short, long], max_new_tokens=8, record_steps=True)
    for row, prompt in enumerate((short, long)):
        alone = generate(model, [prompt], max_new_tokens=8, record_steps=True)
        assert batch.tokens[row] == alone.tokens[0]
        for batched_step, alone_step in zip(batch.steps, alone.steps):
            torch.testing.assert_close(batched_step["logits"][row], alone_step["logits"][0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_generation_past_block_size_uses_cropped_context(attention):
    model = make_model(attention, block_size=16)
    prompt = [1, 2, 3, 4, 5]
    result = generate(model, [prompt, prompt[:2]], max_new_tokens=40, record_steps=True)
    assert all(len(t) == 40 for t in result.tokens)
    starts_seen = set()
    for step, record in enumerate(result.steps):
        for row, row_prompt in enumerate((prompt, prompt[:2])):
            sequence = row_prompt + result.tokens[row][:step]
            start = record["starts"][row]
            starts_seen.add(start)
            assert len(sequence) - start <= 16  # the model never gets more than block_size tokens
            torch.testing.assert_close(record["logits"][row], uncached_last_logits(model, sequence[start:]), atol=ATOL, rtol=0)
    assert max(starts_seen) > 0  # the context was cropped at least once


def test_prompt_longer_than_block_is_cropped():
    model = make_model("sdpa", block_size=16)
    prompt = list(range(1, 41))
    result = generate(model, [prompt], max_new_tokens=3, record_steps=True)
    assert result.steps[0]["starts"] == [40 - 16]
    torch.testing.assert_close(result.steps[0]["logits"][0], uncached_last_logits(model, prompt[-16:]), atol=ATOL, rtol=0)


def test_stop_token_ends_only_its_row():
    model = make_model("sdpa")
    free = generate(model, [[5, 6], [9, 10, 11]], max_new_tokens=12)
    stop = free.tokens[0][3]
    result = generate(model, [[5, 6], [9, 10, 11]], max_new_tokens=12, stop_tokens=[stop])
    first_stop = free.tokens[0].index(stop)
    assert result.tokens[0] == free.tokens[0][: first_stop + 1]
    assert result.finish_reasons[0] == "stop"
    if stop not in free.tokens[1]:
        assert result.tokens[1] == free.tokens[1]
        assert result.finish_reasons[1] == "length"


def test_seeded_sampling_is_reproducible():
    model = make_model("sdpa")
    with torch.no_grad():
        model.wte.weight.div_(20)  # back to a flat distribution so sampling has choices
    draws = [generate(model, [[1, 2, 3]], 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(7)).tokens
             for _ in range(2)]
    assert draws[0] == draws[1]
    other = generate(model, [[1, 2, 3]], 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(8)).tokens
    assert other != draws[0]


def test_invalid_arguments_raise():
    model = make_model("sdpa")
    with pytest.raises(ValueError, match="top_k"):
        generate(model, [[1]], 2, temperature=1.0, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [[1]], 2, temperature=1.0, top_p=1.5)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]], 2)


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("text", ["héllo wörld", "emoji 🙂🎉 and 👩‍👩‍👧", "你好，世界。日本語のテキスト", "mixed ✓ → ∞ 😀 中"])
def test_stream_never_emits_partial_characters(text):
    # A byte-level BPE with few merges cuts multi-byte characters across tokens.
    tokenizer = BPETokenizer.train("hello world and some text " * 20, vocab_size=270).encoding
    ids = tokenizer.encode_ordinary(text)
    token_bytes = [tokenizer.decode_single_token_bytes(token) for token in ids]
    assert any(not is_utf8(piece) for piece in token_bytes)  # at least one character spans several tokens
    stream = Utf8Stream(tokenizer)
    pieces = [stream.push(token) for token in ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert any(piece == "" for piece in pieces)  # some tokens ended inside a character and printed nothing


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A run directory as charlm/train.py writes it, with an untrained model: enough for the command line."""
    root = tmp_path_factory.mktemp("run")
    (root / "input.txt").write_text("ROMEO: but soft, what light through yonder window breaks?\n" * 5)
    meta = prepare_chars(str(root / "input.txt"), str(root / "char"))
    config = GPTConfig(vocab_size=meta["vocab_size"], block_size=16, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    (root / "run" / "checkpoints").mkdir(parents=True)
    save_checkpoint(root / "run" / "checkpoints" / "best.pt",
                    {"model": GPT(config).state_dict(), "model_config": vars(config), "step": 0})
    (root / "run" / "config.yaml").write_text(yaml.safe_dump({"data": {"dir": str(root / "char")}}))
    return root / "run"


def test_command_line_streams_and_reports_speed(char_run):
    proc = run_script(["infer/generate.py", "--run", str(char_run), "--prompt", "ROMEO:", "--max-new-tokens", "40"])
    assert proc.stdout.startswith("ROMEO:")
    assert len(proc.stdout.rstrip("\n")) >= len("ROMEO:") + 40 - proc.stdout.count("\n")
    assert "40 new tokens in" in proc.stderr
    assert "tokens/s" in proc.stderr
    assert "cache on" in proc.stderr
    cached_text = proc.stdout
    uncached = run_script(["infer/generate.py", "--run", str(char_run), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--no-cache"])
    assert uncached.stdout == cached_text
    batch = run_script(["infer/generate.py", "--run", str(char_run), "--prompt", "ROMEO:", "--prompt", "but", "--max-new-tokens", "5"])
    assert batch.stdout.count("-" * 40) == 2


def test_command_line_errors(char_run, tmp_path):
    bad_prompt = run_script(["infer/generate.py", "--run", str(char_run), "--prompt", "Ω"], check=False)
    assert bad_prompt.returncode == 2
    assert "outside the vocabulary" in bad_prompt.stderr
    bad_stop = run_script(["infer/generate.py", "--run", str(char_run), "--stop", "two"], check=False)
    assert bad_stop.returncode == 2
    assert "not a single token" in bad_stop.stderr
    missing = run_script(["infer/generate.py", "--run", str(tmp_path)], check=False)
    assert missing.returncode == 2
    assert "no config.yaml" in missing.stderr
