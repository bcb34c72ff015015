"""infer/speculative.py: greedy output equals the target's, and sampled tokens follow the target's distribution."""

import pytest
import torch
from scipy.stats import chisquare

from infer.generate import generate
from infer.speculative import accept_or_resample, distribution, speculative_generate
from lm.model import GPT, GPTConfig


def make_model(n_layer: int, n_embd: int, seed: int, vocab_size: int = 40, spread: float = 20.0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=n_layer, n_head=2, n_embd=n_embd))
    with torch.no_grad():
        model.wte.weight.mul_(spread)  # spread=20 separates the logits, so rounding never flips an argmax
    return model.eval()


@pytest.mark.parametrize("num_draft", [1, 3, 6])
def test_greedy_equals_target_greedy(num_draft):
    target = make_model(n_layer=2, n_embd=32, seed=0)
    draft = make_model(n_layer=1, n_embd=16, seed=1)
    for prompt in ([1, 2, 3], [7], [5, 9, 11, 13, 2, 30, 4]):
        expected = generate(target, [prompt], max_new_tokens=30).tokens[0]
        result = speculative_generate(target, draft, prompt, max_new_tokens=30, num_draft=num_draft)
        assert result.tokens == expected
        assert 0 <= result.accepted <= result.drafted


def test_draft_equal_to_target_accepts_everything():
    target = make_model(n_layer=2, n_embd=32, seed=0)
    result = speculative_generate(target, target, [1, 2, 3], max_new_tokens=25, num_draft=4)
    assert result.tokens == generate(target, [[1, 2, 3]], max_new_tokens=25).tokens[0]
    assert result.acceptance_rate == 1.0
    assert result.rounds == 5  # each round emits 4 accepted proposals plus one target token


def test_stop_token_ends_generation():
    target = make_model(n_layer=2, n_embd=32, seed=0)
    draft = make_model(n_layer=1, n_embd=16, seed=1)
    free = speculative_generate(target, draft, [4, 5], max_new_tokens=20).tokens
    stop = free[6]
    stopped = speculative_generate(target, draft, [4, 5], max_new_tokens=20, stop_tokens=[stop]).tokens
    assert stopped == free[: free.index(stop) + 1]


def test_accept_or_resample_gives_target_distribution():
    # Proposals drawn from q, passed through the rule, must be distributed as p (chi-square, 20,000 draws).
    p = torch.tensor([0.05, 0.40, 0.15, 0.30, 0.10])
    q = torch.tensor([0.30, 0.10, 0.25, 0.05, 0.30])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    n = 20_000
    for _ in range(n):
        token = int(torch.multinomial(q, 1, generator=generator))
        replacement = accept_or_resample(p, q, token, generator)
        counts[token if replacement is None else replacement] += 1
    statistic, p_value = chisquare(counts.numpy(), (p * n).numpy())
    assert p_value > 1e-3, (counts / n, p)
    naive = torch.zeros(5)  # the draft's own samples are far from p: the test can tell them apart
    for _ in range(n):
        naive[int(torch.multinomial(q, 1, generator=generator))] += 1
    assert chisquare(naive.numpy(), (p * n).numpy())[1] < 1e-6


def test_sampled_tokens_follow_target_distribution():
    # End to end on a 6-token vocabulary: the first two emitted tokens of many seeded runs, against the
    # target's own probabilities of those tokens (the second conditioned on the first).
    target = make_model(n_layer=2, n_embd=16, seed=0, vocab_size=6, spread=3.0)
    draft = make_model(n_layer=1, n_embd=16, seed=5, vocab_size=6, spread=3.0)
    prompt = [1, 2]
    with torch.no_grad():
        p_first = distribution(target(torch.tensor([prompt]))[0][0, -1], 1.0, None, None)  # (6,)
        p_second = distribution(target(torch.tensor([[*prompt, t] for t in range(6)]))[0][:, -1], 1.0, None, None)
    expected_pairs = (p_first.unsqueeze(1) * p_second).flatten()  # (36,): P(first = a, second = b)
    q_first = distribution(draft(torch.tensor([prompt]))[0][0, -1], 1.0, None, None)
    assert (q_first - p_first).abs().max() > 0.05  # the draft really differs from the target

    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(36)
    n = 1500
    accepted = drafted = 0
    for _ in range(n):
        result = speculative_generate(target, draft, prompt, max_new_tokens=2, num_draft=1, temperature=1.0,
                                      generator=generator)
        counts[result.tokens[0] * 6 + result.tokens[1]] += 1
        accepted, drafted = accepted + result.accepted, drafted + result.drafted
    # Chi-square needs expected counts of about 5 or more: pairs rarer than that are pooled into one cell.
    expected_counts = expected_pairs.double() * n
    keep = expected_counts >= 5
    observed, expected = counts.double()[keep], expected_counts[keep]
    if not keep.all():
        observed = torch.cat([observed, counts.double()[~keep].sum().view(1)])
        expected = torch.cat([expected, expected_counts[~keep].sum().view(1)])
    expected *= observed.sum() / expected.sum()  # remove float32 rounding from the probabilities' sum
    assert chisquare(observed.numpy(), expected.numpy())[1] > 1e-3
    assert 0 < accepted < drafted  # some proposals were rejected, so the resampling path ran


def test_invalid_arguments_raise():
    target = make_model(n_layer=1, n_embd=16, seed=0)
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(target, make_model(n_layer=1, n_embd=16, seed=0, vocab_size=41), [1], 5)
    with pytest.raises(ValueError, match="block_size"):
        short = GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=1, n_head=2, n_embd=16))
        speculative_generate(target, short, [1], 10)


@pytest.mark.parametrize("num_draft", [2, 5])
def test_greedy_past_block_size_equals_target(num_draft):
    # 150 new tokens with a 64-token block: the context is cropped several times, at the same
    # moments as infer/generate.py crops it, so the tokens stay equal.
    target = make_model(n_layer=2, n_embd=32, seed=0)
    draft = make_model(n_layer=1, n_embd=16, seed=1)
    for prompt in ([3, 1, 4], list(range(1, 40)) * 2):
        expected = generate(target, [prompt], max_new_tokens=150).tokens[0]
        assert speculative_generate(target, draft, prompt, max_new_tokens=150, num_draft=num_draft).tokens == expected
