"""FlashAttention forward and backward written out in plain PyTorch, one tile at a time.

    from infer.flash_attention import flash_attention
    out = flash_attention(q, k, v, causal=True)   # q: (B, H, Lq, D), k: (B, H, Lk, D), v: (B, H, Lk, Dv)
    out.sum().backward()                          # dq, dk, dv by tiled recomputation

Shapes, named once and used on every reshape: B batch, H heads, Lq query length, Lk key length,
D query/key head width, Dv value head width. bq and bk are the lengths of one query tile and one
key tile, which equal block_q and block_k except in a shorter last tile.

What it computes. The result is exact attention, softmax(q k^T * scale, masked) v, where a masked
score counts as -inf. The queries are cut into tiles of block_q rows and the keys and values into
tiles of block_k rows. For each query tile the keys are visited one tile at a time while every row
keeps three running values: the maximum score seen so far m, the sum l of exp(score - m), and the
unnormalised output acc, the sum of exp(score - m) * v. When a new key tile raises the maximum
from m to m_new, the old l and acc are multiplied by exp(m - m_new) so that every term is relative
to the same maximum. This is the online softmax. After the last key tile, out = acc / l, and the
row log-sum-exp lse = m + log(l) is kept for the backward.

Why it saves memory. Naive attention materialises the (Lq, Lk) score and probability matrices, and
autograd keeps the probabilities for the backward, so its memory grows as Lq * Lk per (B, H). Here
at most a few (bq, bk) tiles exist at once, plus O(Lq) row statistics, so the extra memory is
O(block_q * block_k) per (B, H) and the total is linear in the sequence length. The flop count is
still O(Lq * Lk * D). On a GPU the FlashAttention kernel also gains speed, because each tile stays
in on-chip SRAM. Here every tile operation is a separate PyTorch kernel that writes its result to
memory, so this file shows the algorithm and its memory bound, not the kernel's speed.

Causal alignment. With causal=True, query i may attend to key j if and only if
j <= i + (Lk - Lq), so the diagonal is aligned to the bottom right of the (Lq, Lk) score matrix.
The Lq queries are then the last Lq positions of the sequence, which is what a decoder needs when
new queries attend to a KV cache that already holds the earlier keys. When Lq == Lk this is the
usual lower triangle. When Lq > Lk, the first Lq - Lk queries see no key and return zeros.
PyTorch's scaled_dot_product_attention(is_causal=True) aligns the triangle to the top left instead
(torch.nn.attention.bias.CausalVariant documents both), so the two differ when Lq != Lk. Key tiles
that lie entirely above the diagonal are skipped, which is where the causal speed-up comes from.

Masks. attn_mask is a boolean tensor broadcastable to (B, H, Lq, Lk), True where attention is
allowed, and is combined with causal. A row whose keys are all masked returns zeros, its lse is
-inf, and its gradients are zeros. A padding mask of shape (B, 1, 1, Lk) keeps memory linear, but a
full (B, H, Lq, Lk) mask is itself quadratic and is the caller's to hold.

Backward. It follows FlashAttention-2: the forward saves only q, k, v, out and lse of shape
(B, H, Lq), and the backward recomputes each score tile from q and k. The probabilities follow
without a second softmax pass as P = exp(S - lse). With dO the gradient of out, the tile updates
are dV += P^T dO, dP = dO V^T, dS = P * (dP - delta), dQ += dS K * scale and dK += dS^T Q * scale,
where delta = rowsum(dO * out) equals rowsum(P * dP) for the full row. The recomputation is the
cost: the backward performs five tile matmuls (S again, dV, dP, dQ, dK) where a backward that
stored P would perform four. That is about 25% more backward flops in exchange for never storing
the O(Lq * Lk) probabilities.

Precision. For float16 and bfloat16 inputs, tiles are upcast to float32 before every matmul, and
m, l, acc, lse and the gradient accumulators are float32. float64 inputs are computed in float64.
out, dq, dk and dv are cast back to the input dtype.
NOTE: a CUDA FlashAttention kernel multiplies half-precision tiles on tensor cores with float32
accumulation. The float32 matmuls here are slower on a GPU and round slightly less.
"""

import math

import torch

from torch.autograd.function import once_differentiable


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    attn_mask: torch.Tensor | None = None, block_q: int = 64, block_k: int = 64,
                    scale: float | None = None) -> torch.Tensor:
    """Compute softmax(q k^T * scale, masked) v tile by tile and return it as (B, H, Lq, Dv).

    q is (B, H, Lq, D), k is (B, H, Lk, D) and v is (B, H, Lk, Dv), all of one floating dtype on
    one device. causal masks key j for query i when j > i + (Lk - Lq), the bottom-right
    alignment. attn_mask is an optional boolean tensor broadcastable to (B, H, Lq, Lk), True where
    attention is allowed. block_q and block_k are the tile lengths along the queries and the
    keys. scale defaults to 1 / sqrt(D). Rows with every key masked return zeros.
    The result supports one backward pass (no double backward).
    """
    _validate_inputs(q, k, v, attn_mask, block_q, block_k)
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if attn_mask is not None:
        # expand returns a view with zero strides, so a (B, 1, 1, Lk) padding mask stays that
        # small, and tiles can be sliced from it without special cases for size-1 dimensions.
        attn_mask = attn_mask.expand(B, H, Lq, Lk)
    return _FlashAttention.apply(q, k, v, attn_mask, causal, block_q, block_k, float(scale))


def _validate_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                     block_q: int, block_k: int) -> None:
    """Raise ValueError unless the shapes, dtypes, devices, mask and tile sizes fit together."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions (B, H, L, D), got shape {tuple(t.shape)}")
    if not q.is_floating_point():
        raise ValueError(f"q, k and v must be floating point, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape[:2] != q.shape[:2] or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"q, k and v must share (B, H), got shapes {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if k.shape[3] != q.shape[3]:
        raise ValueError(f"q and k must share the head width D, got {q.shape[3]} and {k.shape[3]}")
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"k and v must share the key length Lk, got {k.shape[2]} and {v.shape[2]}")
    for name, block in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(block, int) or block < 1:
            raise ValueError(f"{name} must be a positive int, got {block!r}")
    if attn_mask is None:
        return
    if attn_mask.dtype != torch.bool:
        raise ValueError(f"attn_mask must be a bool tensor (True = attend), got {attn_mask.dtype}")
    if attn_mask.device != q.device:
        raise ValueError(f"attn_mask must be on {q.device} like q, got {attn_mask.device}")
    full_shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    try:
        broadcast = torch.broadcast_shapes(attn_mask.shape, full_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != full_shape:
        raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to (B, H, Lq, Lk) = "
                         f"{full_shape}")


class _FlashAttention(torch.autograd.Function):
    """Autograd wrapper that saves q, k, v, out and lse, and recomputes the tiles in backward."""

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, causal, block_q, block_k, scale):
        out, lse = _forward(q, k, v, attn_mask, causal, block_q, block_k, scale)
        # attn_mask is saved as well because the backward needs it to rebuild the tiles. It is the
        # caller's tensor (or a view of it), so saving it costs no memory.
        ctx.save_for_backward(q, k, v, out, lse, attn_mask)
        ctx.causal, ctx.block_q, ctx.block_k, ctx.scale = causal, block_q, block_k, scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse, attn_mask = ctx.saved_tensors
        dq, dk, dv = _backward(grad_out, q, k, v, out, lse, attn_mask, ctx.causal, ctx.block_q, ctx.block_k,
                               ctx.scale)
        return dq, dk, dv, None, None, None, None, None


def _key_tile_end(q_end: int, Lq: int, Lk: int, causal: bool) -> int:
    """Return the exclusive end of the keys visible to the query tile that ends at q_end."""
    if not causal:
        return Lk
    # Query q_end - 1 attends to keys up to q_end - 1 + (Lk - Lq). Key tiles that start at or after
    # this end are masked for every query in the tile, so the loops never visit them.
    return max(0, min(Lk, q_end + Lk - Lq))


def _tile_mask(q_start: int, q_end: int, k_start: int, k_end: int, Lq: int, Lk: int, causal: bool,
               attn_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """Return the (bq, bk) or (B, H, bq, bk) bool tile of allowed scores, or None if all are allowed."""
    allowed = None
    # A tile needs the causal mask only if its last key lies beyond what its first query may see.
    if causal and k_end - 1 > q_start + Lk - Lq:
        rows = torch.arange(q_start, q_end, device=device).unsqueeze(1)  # (bq, 1)
        cols = torch.arange(k_start, k_end, device=device).unsqueeze(0)  # (1, bk)
        allowed = cols <= rows + (Lk - Lq)  # (bq, bk)
    if attn_mask is not None:
        padding = attn_mask[:, :, q_start:q_end, k_start:k_end]  # (B, H, bq, bk), a view
        allowed = padding if allowed is None else allowed & padding
    return allowed


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    """Replace -inf by 0 so that exp(s - x) gives 0 rather than NaN where s is also -inf."""
    return torch.where(torch.isneginf(x), torch.zeros_like(x), x)


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, causal: bool,
             block_q: int, block_k: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the online-softmax forward and return out (B, H, Lq, Dv) and lse (B, H, Lq)."""
    B, H, Lq, _ = q.shape
    Lk, Dv = v.shape[2], v.shape[3]
    # float32 at least, so that half-precision inputs keep full-precision running statistics.
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    out = torch.empty(B, H, Lq, Dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, Lq, dtype=acc_dtype, device=q.device)

    for q_start in range(0, Lq, block_q):
        q_end = min(q_start + block_q, Lq)
        # Scaling the (bq, D) query tile once is cheaper than scaling every (bq, bk) score tile.
        q_tile = q[:, :, q_start:q_end].to(acc_dtype) * scale  # (B, H, bq, D)
        row_max = torch.full((B, H, q_end - q_start), float("-inf"), dtype=acc_dtype, device=q.device)
        row_sum = torch.zeros(B, H, q_end - q_start, dtype=acc_dtype, device=q.device)
        acc = torch.zeros(B, H, q_end - q_start, Dv, dtype=acc_dtype, device=q.device)

        for k_start in range(0, _key_tile_end(q_end, Lq, Lk, causal), block_k):
            k_end = min(k_start + block_k, Lk)
            k_tile = k[:, :, k_start:k_end].to(acc_dtype)  # (B, H, bk, D)
            v_tile = v[:, :, k_start:k_end].to(acc_dtype)  # (B, H, bk, Dv)
            scores = q_tile @ k_tile.transpose(-2, -1)  # (B, H, bq, bk)
            allowed = _tile_mask(q_start, q_end, k_start, k_end, Lq, Lk, causal, attn_mask, q.device)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))

            new_max = torch.maximum(row_max, scores.amax(dim=-1))  # (B, H, bq)
            # A row with no allowed key so far keeps new_max = -inf. Subtracting 0 instead turns its
            # -inf scores into exp(-inf) = 0, where -inf - (-inf) would give NaN.
            safe_max = _finite_or_zero(new_max)
            probs = torch.exp(scores - safe_max.unsqueeze(-1))  # (B, H, bq, bk), unnormalised
            # exp(m_old - m_new) <= 1 shrinks what was summed against the old maximum. It is 0 when
            # m_old = -inf, which is harmless because row_sum and acc are still 0 there.
            correction = torch.exp(row_max - safe_max)  # (B, H, bq)
            row_sum = row_sum * correction + probs.sum(dim=-1)
            acc = acc * correction.unsqueeze(-1) + probs @ v_tile  # (B, H, bq, Dv)
            row_max = new_max

        # Rows that saw no allowed key have row_sum = 0 and acc = 0, so they return zeros, not 0/0.
        empty = row_sum == 0  # (B, H, bq)
        denominator = torch.where(empty, torch.ones_like(row_sum), row_sum)
        out[:, :, q_start:q_end] = (acc / denominator.unsqueeze(-1)).to(q.dtype)
        # log(0) = -inf marks fully masked rows for the backward.
        lse[:, :, q_start:q_end] = row_max + torch.log(row_sum)
    return out, lse


def _backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
              lse: torch.Tensor, attn_mask: torch.Tensor | None, causal: bool, block_q: int, block_k: int,
              scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recompute the probability tiles from lse and return dq, dk, dv in the input dtype."""
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    acc_dtype = lse.dtype
    dq = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
    dk = torch.zeros(k.shape, dtype=acc_dtype, device=q.device)
    dv = torch.zeros(v.shape, dtype=acc_dtype, device=q.device)

    # The CUDA kernel of FlashAttention-2 loops over key tiles on the outside so that each thread
    # block owns one dK, dV tile and only dQ needs atomic adds. Here the loop runs in order, so
    # the query-outer order of the forward is kept, with the same causal skipping.
    for q_start in range(0, Lq, block_q):
        q_end = min(q_start + block_q, Lq)
        q_tile = q[:, :, q_start:q_end].to(acc_dtype) * scale  # (B, H, bq, D)
        dout_tile = grad_out[:, :, q_start:q_end].to(acc_dtype)  # (B, H, bq, Dv)
        # delta = rowsum(dO * out) equals rowsum(P * dP) over the whole row, and is known before
        # any key tile is visited, which is what lets dS be computed one tile at a time.
        delta = (dout_tile * out[:, :, q_start:q_end].to(acc_dtype)).sum(dim=-1)  # (B, H, bq)
        # Fully masked rows have lse = -inf and every score -inf. Subtracting 0 gives P = 0 there.
        row_lse = _finite_or_zero(lse[:, :, q_start:q_end])  # (B, H, bq)
        dq_tile = torch.zeros_like(q_tile)  # (B, H, bq, D)

        for k_start in range(0, _key_tile_end(q_end, Lq, Lk, causal), block_k):
            k_end = min(k_start + block_k, Lk)
            k_tile = k[:, :, k_start:k_end].to(acc_dtype)  # (B, H, bk, D)
            v_tile = v[:, :, k_start:k_end].to(acc_dtype)  # (B, H, bk, Dv)
            scores = q_tile @ k_tile.transpose(-2, -1)  # (B, H, bq, bk)
            allowed = _tile_mask(q_start, q_end, k_start, k_end, Lq, Lk, causal, attn_mask, q.device)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            probs = torch.exp(scores - row_lse.unsqueeze(-1))  # (B, H, bq, bk), normalised P

            dv[:, :, k_start:k_end] += probs.transpose(-2, -1) @ dout_tile  # (B, H, bk, Dv)
            dprobs = dout_tile @ v_tile.transpose(-2, -1)  # (B, H, bq, bk)
            dscores = probs * (dprobs - delta.unsqueeze(-1))  # (B, H, bq, bk)
            dq_tile += dscores @ k_tile  # (B, H, bq, D), times scale after the loop
            # q_tile already carries the scale, so this is dS^T Q * scale.
            dk[:, :, k_start:k_end] += dscores.transpose(-2, -1) @ q_tile  # (B, H, bk, D)

        dq[:, :, q_start:q_end] = dq_tile * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
