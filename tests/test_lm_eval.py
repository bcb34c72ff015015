"""Sliding-window perplexity: every predictable token scored once, token-weighted, equal to one pass when it fits."""

import math

import pytest
import torch
import torch.nn.functional as F

from lm.eval import sliding_window_nll
from lm.model import GPT, GPTConfig


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=31, block_size=32, n_layer=2, n_head=2, n_embd=16)).eval()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 31, (21,), generator=torch.Generator().manual_seed(1))


def test_each_predictable_token_scored_once(model, tokens):
    total, count, scored = sliding_window_nll(model, tokens, window=8, stride=4)
    assert count == 20
    assert scored == list(range(1, 21))


def test_total_matches_per_token_nll(model, tokens):
    # Rebuild the expected total by hand: target t is predicted from the window that scored it.
    total, _, _ = sliding_window_nll(model, tokens, window=8, stride=4)
    expected = 0.0
    for begin, targets in ((0, range(1, 9)), (4, range(9, 13)), (8, range(13, 17)), (12, range(17, 21))):
        logits, _ = model(tokens[begin : begin + 8].unsqueeze(0))
        for t in targets:
            expected += F.cross_entropy(logits[0, t - begin - 1], tokens[t]).item()
    assert total == pytest.approx(expected, rel=1e-6)


def test_window_covering_sequence_equals_one_forward(model, tokens):
    total, count, _ = sliding_window_nll(model, tokens, window=32, stride=16)
    _, loss = model(tokens[:-1].unsqueeze(0), tokens[1:].unsqueeze(0))
    assert count == 20
    assert total / count == pytest.approx(loss.item(), rel=1e-6)


def test_result_is_token_weighted(model, tokens):
    # Windows of 8, 4, 4 and 4 new tokens: the token-weighted mean differs from the mean of window means.
    total, count, _ = sliding_window_nll(model, tokens, window=8, stride=4)
    window_means = []
    for begin, targets in ((0, range(1, 9)), (4, range(9, 13)), (8, range(13, 17)), (12, range(17, 21))):
        logits, _ = model(tokens[begin : begin + 8].unsqueeze(0))
        window_means.append(sum(F.cross_entropy(logits[0, t - begin - 1], tokens[t]).item() for t in targets) / len(targets))
    assert total / count != pytest.approx(sum(window_means) / len(window_means), rel=1e-9)
    assert math.isfinite(total)


@pytest.mark.parametrize("window, stride", [(8, 0), (8, 9), (64, 8)])
def test_invalid_window_or_stride(model, tokens, window, stride):
    with pytest.raises(ValueError):
        sliding_window_nll(model, tokens, window=window, stride=stride)
