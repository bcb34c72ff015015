"""The hand-written GPT against PyTorch's SDPA and Hugging Face's GPT-2, plus tying, keys and sampling."""

import io

import pytest
import torch

from common.checkpoint import unwrap_model
from lm.model import GPT, GPTConfig, filter_logits

TINY = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.0)


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **overrides}))


def test_manual_attention_equals_sdpa():
    manual = tiny_gpt(attention="manual")
    sdpa = tiny_gpt(attention="sdpa")
    sdpa.load_state_dict(manual.state_dict())
    idx = torch.randint(0, 97, (3, 32), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(manual(idx)[0], sdpa(idx)[0], rtol=0, atol=1e-5)


def test_future_tokens_never_change_past_logits():
    model = tiny_gpt().eval()
    idx = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(2))
    changed = idx.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % 97
    before, after = model(idx)[0], model(changed)[0]
    assert torch.equal(before[0, :12], after[0, :12])
    assert not torch.allclose(before[0, 12:], after[0, 12:])


def test_loss_is_cross_entropy_ignoring_minus_100():
    model = tiny_gpt()
    idx = torch.randint(0, 97, (2, 10))
    targets = idx.roll(-1, dims=1)
    targets[:, -1] = -100
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97), targets[:, :-1].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_tied_head_survives_save_load():
    model = tiny_gpt()
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    loaded = tiny_gpt()
    loaded.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    assert loaded.lm_head.weight.data_ptr() == loaded.wte.weight.data_ptr()
    with torch.no_grad():
        loaded.wte.weight[0, 0] = 123.0
    assert loaded.lm_head.weight[0, 0].item() == 123.0


def test_compiled_model_state_loads_with_strict_keys():
    model = tiny_gpt()
    compiled = torch.compile(model)  # wrapping is lazy; keys get the _orig_mod. prefix
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    plain = tiny_gpt(n_layer=2)
    plain.load_state_dict(unwrap_model(compiled).state_dict(), strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(plain.state_dict()[key], value)


def test_residual_projections_use_scaled_init():
    model = GPT(GPTConfig(**{**TINY, "n_layer": 8, "n_embd": 256, "n_head": 4}))
    expected = 0.02 / (2 * 8) ** 0.5
    assert abs(model.h[0].attn.c_proj.weight.std().item() - expected) < 0.1 * expected
    assert abs(model.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002


def test_weight_decay_groups():
    model = tiny_gpt()
    decayed, plain = model.param_groups(0.1)
    assert all(p.dim() >= 2 for p in decayed["params"])
    assert all(p.dim() < 2 for p in plain["params"])
    assert sum(p.numel() for g in (decayed, plain) for p in g["params"]) == model.num_params(non_embedding=False)


def greedy_by_hand(model: GPT, idx: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_temperature_zero_is_argmax():
    model = tiny_gpt().eval()
    prompt = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(3))
    assert torch.equal(model.generate(prompt, 40, temperature=0), greedy_by_hand(model, prompt, 40))


def test_top_k_one_is_argmax():
    model = tiny_gpt().eval()
    prompt = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(4))
    sampled = model.generate(prompt, 10, temperature=1.5, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, greedy_by_hand(model, prompt, 10))


def test_fixed_seed_reproduces_samples():
    model = tiny_gpt().eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    first = model.generate(prompt, 30, top_p=0.9, generator=torch.Generator().manual_seed(7))
    second = model.generate(prompt, 30, top_p=0.9, generator=torch.Generator().manual_seed(7))
    third = model.generate(prompt, 30, top_p=0.9, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


@pytest.mark.parametrize("kwargs, message", [
    ({"top_k": 0}, "top_k must be a positive integer"),
    ({"top_k": -3}, "top_k must be a positive integer"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
])
def test_invalid_sampling_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_gpt().generate(torch.zeros(1, 1, dtype=torch.long), 1, **kwargs)


def test_top_k_at_vocab_size_keeps_everything():
    logits = torch.randn(2, 97)
    assert torch.equal(filter_logits(logits, 97, None), logits)
    assert torch.equal(filter_logits(logits, 500, None), logits)


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, None, 0.8))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(filter_logits(logits, None, 0.81))
    assert kept.tolist() == [[True, True, True, False]]


def test_generation_past_block_size_crops_context():
    model = tiny_gpt(block_size=8).eval()
    out = model.generate(torch.zeros(1, 6, dtype=torch.long), 20, temperature=0)
    assert out.shape == (1, 26)


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_from_pretrained_matches_transformers(tmp_path, safe_serialization):
    import transformers  # a test dependency (requirements-dev.txt), used only as the reference
    config = transformers.GPT2Config(vocab_size=101, n_positions=48, n_embd=48, n_layer=3, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(config).eval()
    reference.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    ours = GPT.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 101, (2, 48), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = reference(idx).logits
    torch.testing.assert_close(ours(idx)[0], expected, rtol=0, atol=1e-5)
