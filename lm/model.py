"""A decoder-only transformer (GPT-2 layout) written out by hand.

    from lm.model import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128))
    logits, loss = model(idx, targets)          # idx, targets: (B, T) token ids
    out = model.generate(idx, 100, temperature=0.8, top_k=50)
    gpt2 = GPT.from_pretrained("path/to/hf-gpt2-dir")  # config.json + model.safetensors, no network

Shapes, named once and used on every reshape: B batch, T sequence length, C embedding width
(n_embd), H heads (n_head), D head width (C // H), V vocabulary size.

The parameter names follow Hugging Face's GPT-2 (wte, wpe, ln_1, attn.c_attn, attn.c_proj, ln_2,
mlp.c_fc, mlp.c_proj, ln_f), which keeps the checkpoint mapping in lm/hf_gpt2.py one line per key.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    vocab_size: int = 50304
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    attention: str = "manual"  # "manual" (written out below) or "sdpa" (F.scaled_dot_product_attention)

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.attention not in ("manual", "sdpa"):
            raise ValueError(f"attention must be 'manual' or 'sdpa', got {self.attention!r}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.attention = cfg.attention
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # query, key, value in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual_projection = True  # scaled at init, see GPT._init_weights
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        # True where key position <= query position; a buffer so it moves with .to(device).
        causal = torch.tril(torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool))
        self.register_buffer("causal_mask", causal.view(1, 1, cfg.block_size, cfg.block_size), persistent=False)

    def forward(self, x: torch.Tensor, cache=None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)

        if cache is not None:
            # Cached inference: the new queries attend to every filled slot plus the T new ones.
            # The cache's mask is causal over slots and hides left padding. No dropout: inference only.
            k, v = cache.update(layer, k, v)  # each (B, H, S, D), S = filled slots + T
            mask = cache.attention_mask(T)  # (B, 1, T, S), or None when every key may be seen
            if self.attention == "sdpa":
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            else:
                scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # (B, H, T, D) @ (B, H, D, S) -> (B, H, T, S)
                if mask is not None:
                    scores = scores.masked_fill(~mask, float("-inf"))
                y = F.softmax(scores, dim=-1) @ v  # (B, H, T, S) @ (B, H, S, D) -> (B, H, T, D)
        elif self.attention == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # (B, H, T, D) @ (B, H, D, T) -> (B, H, T, T)
            scores = scores.masked_fill(~self.causal_mask[:, :, :T, :T], float("-inf"))  # no peeking ahead
            weights = F.softmax(scores, dim=-1)  # each query row sums to 1 over the keys it may see
            weights = self.attn_dropout(weights)
            y = weights @ v  # (B, H, T, T) @ (B, H, T, D) -> (B, H, T, D)

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, H, T, D) -> (B, T, H, D) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual_projection = True
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2 uses the tanh approximation of GELU ("gelu_new" in Hugging Face).
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache=None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # token embedding, shared with the LM head
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)  # learned absolute positions
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one (V, C) matrix embeds and un-embeds
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 initialisation: N(0, 0.02) weights, zero biases; residual projections get
        std 0.02 / sqrt(2 * n_layer), because each block adds two of them to the residual stream
        and the sum's variance would otherwise grow with depth."""
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_projection", False):
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache=None,
                positions: torch.Tensor | None = None, last_logits_only: bool = False):
        """Return logits (B, T, V) and, with targets, the mean cross-entropy over targets != -100.

        For inference, `cache` (an infer.kv_cache.KVCache) supplies the keys and values of earlier
        slots and stores the new ones. positions (T,) or (B, T) default to 0..T-1 without a cache
        and to the cache's per-row positions with one. last_logits_only computes the LM head for
        the last position only, (B, 1, V), which is all that decoding needs.
        """
        B, T = idx.shape
        if last_logits_only and targets is not None:
            raise ValueError("last_logits_only computes no loss; pass targets=None")
        if cache is None and T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}; crop the context")
        if positions is None:
            positions = torch.arange(T, device=idx.device) if cache is None else cache.positions(T)
        x = self.drop(self.wte(idx) + self.wpe(positions))  # (B, T, C) + (T, C) or (B, T, C) -> (B, T, C)
        for layer, block in enumerate(self.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.advance(T)
        if last_logits_only:
            x = x[:, -1:, :]  # (B, 1, C)
        logits = self.lm_head(self.ln_f(x))  # (B, T, C) -> (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1).float(), targets.reshape(B * T), ignore_index=-100)
        return logits, loss

    def num_params(self, non_embedding: bool = True) -> int:
        """Count parameters once (the tied head is the embedding); optionally without the position table."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on matrices (linear weights and embeddings) only; biases and LayerNorm gains are not decayed."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward) at context length seq_len.

        Every weight does one multiply-add (2 FLOPs) per token forward and twice that backward: 6N.
        Attention adds, per layer and token, 2 * T * C for the scores and 2 * T * C for the weighted
        sum forward, so 12 * n_layer * T * C with backward. The position table is a lookup, not a matmul.
        """
        T = seq_len or self.config.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * self.config.n_layer * T * self.config.n_embd

    def estimate_mfu(self, tokens_per_s: float, peak_flops: float, seq_len: int | None = None) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s over the peak FLOP/s the caller measured or looked up."""
        return self.flops_per_token(seq_len) * tokens_per_s / peak_flops

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Append max_new_tokens sampled tokens to idx (B, T), one forward pass of the cropped context each.

        temperature 0 picks the argmax. top_k keeps the k most likely tokens (k at or above the
        vocabulary keeps all); top_p keeps the smallest set whose probability reaches p.
        """
        if top_k is not None and top_k <= 0:
            raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if temperature < 0:
            raise ValueError(f"temperature must be zero or positive, got {temperature}")
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]
            logits, _ = self(context)
            logits = logits[:, -1, :].float()  # (B, V): the prediction for the next position
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                probs = F.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
        self.train(was_training)
        return idx

    @classmethod
    def from_pretrained(cls, directory, attention: str = "manual") -> "GPT":
        """Load a Hugging Face GPT-2 checkpoint from a local folder (see lm/hf_gpt2.py)."""
        from lm.hf_gpt2 import load_gpt2

        return load_gpt2(cls, directory, attention)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set to -inf every logit (B, V) outside the top-k set and outside the top-p nucleus."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the most likely token always stays.
        drop_sorted = cumulative - F.softmax(sorted_logits, dim=-1) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits
