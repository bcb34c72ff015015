"""Speculative decoding: a small draft GPT proposes tokens, the target GPT checks them all in one pass.

    from infer.speculative import speculative_generate
    result = speculative_generate(target, draft, prompt_ids, max_new_tokens=200, num_draft=4)
    result.tokens, result.acceptance_rate

Each round the draft model proposes `num_draft` tokens one at a time, with its own KV cache. The
target model then runs once over the last accepted token and the proposals, which gives its
distribution p at every proposed position plus one more. Proposal x drawn from the draft's q is
accepted with probability min(1, p(x) / q(x)). At the first rejection the token is drawn instead
from the residual max(0, p - q), normalised, and the round ends. When every proposal is accepted,
one more token comes from the target's distribution after the last one. This accept/resample
rule makes every emitted token follow the target's distribution exactly, whatever the draft
proposes (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding").
At temperature 0 both distributions are one-hot on the argmax, so a proposal is accepted when it
equals the target's argmax and the output equals the target's own greedy decoding.

A round costs num_draft draft passes and one target pass, and emits between 1 and num_draft + 1
tokens, so the speed-up grows with the acceptance rate and with the cost ratio of the two models.
After a rejection both caches drop the slots of the rejected proposals (KVCache.truncate).
Past the target's block_size the context is cropped exactly as infer/generate.py crops it (to the
last block_size // 2 tokens, when the next prediction would need more than block_size), and a
round proposes only as many tokens as still fit, so greedy output equals the target's greedy
output from infer/generate.py at any length.
"""

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from infer.kv_cache import KVCache
from lm.model import GPT, filter_logits


@dataclass
class SpeculativeResult:
    tokens: list[int]  # the new tokens
    drafted: int  # proposals made by the draft model
    accepted: int  # proposals the target accepted
    rounds: int  # target passes after the prefill
    seconds: float

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def distribution(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Next-token probabilities (..., V) after temperature and the top-k / top-p filters; one-hot argmax at temperature 0."""
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).to(torch.float32)
    flat = logits.reshape(-1, logits.size(-1)).float() / temperature  # (N, V): filter_logits works on rows
    return F.softmax(filter_logits(flat, top_k, top_p), dim=-1).view(logits.shape)


def accept_or_resample(p: torch.Tensor, q: torch.Tensor, token: int, generator: torch.Generator | None) -> int | None:
    """Apply the speculative rule to one proposal: None when `token` (drawn from q) is accepted, else the replacement.

    p and q are (V,) probability vectors of the target and the draft at the same position.
    """
    ratio = p[token] / q[token] if q[token] > 0 else torch.tensor(float("inf"))
    if torch.rand((), generator=generator) < ratio.clamp(max=1.0):
        return None
    residual = (p - q).clamp(min=0)
    if residual.sum() <= 0:  # p == q up to rounding: a rejection is then a rounding event, so draw from p
        residual = p
    return int(torch.multinomial(residual / residual.sum(), 1, generator=generator))


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def speculative_generate(target: GPT, draft: GPT, prompt: list[int], max_new_tokens: int, num_draft: int = 4,
                         temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                         stop_tokens=(), generator: torch.Generator | None = None) -> SpeculativeResult:
    """Generate up to max_new_tokens tokens after prompt (one sequence) with the target's distribution."""
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"the draft's vocabulary ({draft.config.vocab_size}) differs from the target's "
                         f"({target.config.vocab_size}); both models must share one tokenizer")
    if not prompt or num_draft < 1 or max_new_tokens < 1:
        raise ValueError("need a non-empty prompt, num_draft >= 1 and max_new_tokens >= 1")
    block = target.config.block_size
    if draft.config.block_size < block:
        raise ValueError(f"the draft's block_size ({draft.config.block_size}) is shorter than the target's ({block}); "
                         f"the draft must see every context the target sees")
    keep = max(1, block // 2)
    target.eval()
    draft.eval()
    device = next(target.parameters()).device
    target_cache = KVCache(target.config, 1, device=device)
    draft_cache = KVCache(draft.config, 1, device=device)
    stop_tokens = set(stop_tokens)
    start = time.perf_counter()

    # The models see sequence[offset:]. Invariant at the start of a round: the target cache contains
    # every token of that context but the last.
    sequence = list(prompt)
    offset = max(0, len(sequence) - block)
    new_tokens: list[int] = []
    drafted = accepted = rounds = 0
    needs_prefill = True
    while len(new_tokens) < max_new_tokens:
        if len(sequence) - offset > block:  # the next prediction needs more context than the model has
            offset = len(sequence) - keep
            needs_prefill = True
        if needs_prefill:
            target_cache.reset()
            draft_cache.reset()
            if len(sequence) - offset > 1:
                target(torch.tensor([sequence[offset:-1]], device=device), cache=target_cache, last_logits_only=True)
            needs_prefill = False
        # A round emits up to k + 1 tokens, and its last prediction needs a context of len(sequence) - offset + k.
        k = min(num_draft, max_new_tokens - len(new_tokens) - 1, block - (len(sequence) - offset))
        # Draft: catch up on the tokens its cache lacks, then propose k tokens one at a time.
        proposals, draft_probs = [], []
        pending = sequence[offset + draft_cache.length :]
        for _ in range(k):
            logits = draft(torch.tensor([pending], device=device), cache=draft_cache, last_logits_only=True)[0][0, -1]
            q = distribution(logits, temperature, top_k, top_p)  # (V,)
            token = int(q.argmax()) if temperature == 0 else draw(q, generator)
            proposals.append(token)
            draft_probs.append(q)
            pending = [token]

        # Target: one pass over the last accepted token and the k proposals gives k + 1 distributions.
        base = len(sequence) - offset  # context length before this round
        logits = target(torch.tensor([[sequence[-1], *proposals]], device=device), cache=target_cache)[0][0]  # (k + 1, V)
        p = distribution(logits, temperature, top_k, top_p)  # (k + 1, V)
        rounds += 1
        emitted, accepted_now = [], 0
        for i, token in enumerate(proposals):
            if temperature == 0:
                target_choice = int(p[i].argmax())
                replacement = None if token == target_choice else target_choice
            else:
                replacement = accept_or_resample(p[i], draft_probs[i], token, generator)
            if replacement is not None:
                emitted.append(replacement)
                break
            emitted.append(token)
            accepted_now += 1
        if accepted_now == k:  # every proposal accepted: one more token from the target's last distribution
            emitted.append(int(p[k].argmax()) if temperature == 0 else draw(p[k], generator))
        drafted += k
        accepted += accepted_now

        # Keep only the slots of tokens that stay in the sequence.
        target_cache.truncate(base + accepted_now)
        draft_cache.truncate(min(draft_cache.length, base + accepted_now))
        for token in emitted:
            new_tokens.append(token)
            sequence.append(token)
            if token in stop_tokens or len(new_tokens) == max_new_tokens:
                return SpeculativeResult(new_tokens, drafted, accepted, rounds, time.perf_counter() - start)
    return SpeculativeResult(new_tokens, drafted, accepted, rounds, time.perf_counter() - start)
