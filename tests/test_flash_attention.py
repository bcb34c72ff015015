"""Tiled FlashAttention against a naive full-matrix reference, PyTorch's SDPA and gradcheck.

The naive reference builds the whole (Lq, Lk) score matrix. SDPA serves as a second reference only
where its masking means the same thing: its is_causal=True aligns the triangle to the top left, so
for Lq != Lk it gets an explicit bottom-right boolean mask instead.
"""

import re

import pytest
import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from infer.flash_attention import flash_attention

MATMUL_OPS = ("aten.bmm.default", "aten.mm.default")


def make_qkv(B: int, H: int, Lq: int, Lk: int, D: int, dtype=torch.float32, seed: int = 0,
             requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Lq, D, generator=generator).to(dtype)
    k = torch.randn(B, H, Lk, D, generator=generator).to(dtype)
    v = torch.randn(B, H, Lk, D, generator=generator).to(dtype)
    return q.requires_grad_(requires_grad), k.requires_grad_(requires_grad), v.requires_grad_(requires_grad)


def bottom_right_causal(Lq: int, Lk: int) -> torch.Tensor:
    """Return the (Lq, Lk) bool mask that lets query i see key j when j <= i + (Lk - Lq)."""
    return torch.ones(Lq, Lk, dtype=torch.bool).tril(diagonal=Lk - Lq)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention through the full (B, H, Lq, Lk) score matrix, with zeros for fully masked rows."""
    Lq, Lk, D = q.shape[2], k.shape[2], q.shape[3]
    scores = q @ k.transpose(-2, -1) / D**0.5  # (B, H, Lq, Lk)
    allowed = torch.ones(Lq, Lk, dtype=torch.bool)
    if causal:
        allowed = bottom_right_causal(Lq, Lk)
    if attn_mask is not None:
        allowed = allowed & attn_mask  # (B, H, Lq, Lk) after broadcasting
    allowed = allowed.expand(scores.shape)
    scores = scores.masked_fill(~allowed, float("-inf"))
    # softmax over a row of only -inf is NaN, and its gradient too. Such rows get finite scores
    # here and their weights are zeroed afterwards, so both the output and the gradients are 0.
    has_key = allowed.any(dim=-1, keepdim=True)  # (B, H, Lq, 1)
    scores = scores.masked_fill(~has_key, 0.0)
    weights = torch.softmax(scores, dim=-1) * has_key
    return weights @ v


def grads(out: torch.Tensor, inputs: tuple[torch.Tensor, ...], grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(out, inputs, grad_out)


class OpRecorder(TorchDispatchMode):
    """Record every aten op that runs and the largest storage, in bytes, behind any tensor it returns.

    Storage bytes rather than numel, because an expanded mask reports the full numel but keeps
    its small storage, while a materialised score matrix is counted at its real size.
    """

    def __init__(self):
        super().__init__()
        self.max_bytes = 0
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        self.ops.append(str(func))
        for t in pytree.tree_leaves(result):
            if isinstance(t, torch.Tensor):
                self.max_bytes = max(self.max_bytes, t.untyped_storage().nbytes())
        return result

    def count(self, names: tuple[str, ...]) -> int:
        return sum(op in names for op in self.ops)


# Forward checks in float32 use atol 1e-5. The rounding error of these small cases stays below 1e-6.

@pytest.mark.parametrize("causal", [False, True])
def test_forward_matches_naive_length_37_tile_16(causal):
    # 37 = 2 * 16 + 5, so the last query tile and the last key tile are short.
    q, k, v = make_qkv(2, 3, 37, 37, 8)
    out = flash_attention(q, k, v, causal=causal, block_q=16, block_k=16)
    assert out.shape == (2, 3, 37, 8)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, naive_attention(q, k, v, causal), rtol=0, atol=1e-5)


def test_causal_short_queries_align_bottom_right():
    q, k, v = make_qkv(2, 2, 5, 12, 8, seed=1)
    # Written out by hand rather than with tril: query i attends to keys j <= i + (12 - 5).
    explicit = torch.tensor([[j <= i + 7 for j in range(12)] for i in range(5)])
    out = flash_attention(q, k, v, causal=True, block_q=4, block_k=4)
    torch.testing.assert_close(out, naive_attention(q, k, v, attn_mask=explicit), rtol=0, atol=1e-5)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=explicit)
    torch.testing.assert_close(out, sdpa, rtol=0, atol=1e-5)
    # SDPA's is_causal=True aligns to the top left (query i attends to j <= i), so it differs here.
    sdpa_top_left = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.allclose(out, sdpa_top_left, rtol=0, atol=1e-3)


@pytest.mark.parametrize("causal", [False, True])
def test_equal_lengths_match_sdpa(causal):
    # With Lq == Lk the top-left and bottom-right triangles coincide, so is_causal can be used.
    q, k, v = make_qkv(2, 2, 29, 29, 16, seed=2)
    out = flash_attention(q, k, v, causal=causal, block_q=8, block_k=16)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(out, sdpa, rtol=0, atol=1e-5)


def test_fully_masked_row_returns_zeros():
    q, k, v = make_qkv(2, 2, 9, 11, 8, seed=3, requires_grad=True)
    mask = torch.ones(2, 2, 9, 11, dtype=torch.bool)
    mask[1, 0, 4] = False  # query 4 of batch 1, head 0 attends to no key
    mask[0, 1, :, 3:6] = False  # keys 3 to 5 of batch 0, head 1 span the edge of key tiles 0 and 1
    out = flash_attention(q, k, v, attn_mask=mask, block_q=4, block_k=4)
    assert torch.equal(out[1, 0, 4], torch.zeros(8))
    assert not out.isnan().any()
    torch.testing.assert_close(out, naive_attention(q, k, v, attn_mask=mask), rtol=0, atol=1e-5)

    dq, dk, dv = grads(out, (q, k, v), torch.randn_like(out))
    assert dq.isfinite().all()
    assert dk.isfinite().all()
    assert dv.isfinite().all()
    assert torch.equal(dq[1, 0, 4], torch.zeros(8))


def test_queries_before_first_key_return_zeros():
    # Causal with Lq > Lk: query i attends to keys j <= i - 4, so queries 0 to 3 have no key.
    q, k, v = make_qkv(1, 2, 10, 6, 8, seed=4, requires_grad=True)
    out = flash_attention(q, k, v, causal=True, block_q=4, block_k=4)
    assert torch.equal(out[:, :, :4], torch.zeros(1, 2, 4, 8))
    torch.testing.assert_close(out, naive_attention(q, k, v, causal=True), rtol=0, atol=1e-5)

    dq, dk, dv = grads(out, (q, k, v), torch.randn_like(out))
    assert dq.isfinite().all()
    assert dk.isfinite().all()
    assert dv.isfinite().all()
    assert torch.equal(dq[:, :, :4], torch.zeros(1, 2, 4, 8))


# Gradients in float32 use atol and rtol 1e-4. Each gradient sums up to Lq or Lk products in a
# different order from autograd's. The error at these sizes stays below 1e-6, so the margin is wide.
GRAD_CASES = [
    # causal, Lq, Lk, block_q, block_k, padding mask
    (False, 20, 20, 8, 8, False),
    (True, 20, 20, 16, 16, False),
    (True, 7, 19, 8, 8, False),
    (False, 13, 29, 16, 8, False),
    (True, 23, 11, 8, 16, False),
    (True, 19, 19, 8, 16, True),
]


@pytest.mark.parametrize("causal,Lq,Lk,block_q,block_k,padding", GRAD_CASES)
def test_gradients_match_naive(causal, Lq, Lk, block_q, block_k, padding):
    q, k, v = make_qkv(2, 2, Lq, Lk, 8, seed=5, requires_grad=True)
    mask = None
    if padding:
        # The last 3 keys of batch 1 are padding. (B, 1, 1, Lk) broadcasts over heads and queries.
        mask = torch.ones(2, 1, 1, Lk, dtype=torch.bool)
        mask[1, :, :, -3:] = False
    grad_out = torch.randn(2, 2, Lq, 8, generator=torch.Generator().manual_seed(6))

    out = flash_attention(q, k, v, causal=causal, attn_mask=mask, block_q=block_q, block_k=block_k)
    expected = naive_attention(q, k, v, causal=causal, attn_mask=mask)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)

    dq, dk, dv = grads(out, (q, k, v), grad_out)
    dq_ref, dk_ref, dv_ref = grads(expected, (q, k, v), grad_out)
    torch.testing.assert_close(dq, dq_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dk, dk_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dv, dv_ref, rtol=1e-4, atol=1e-4)


# Half precision against the float32 reference on the same rounded inputs. The outputs here reach
# about 2.6 in magnitude, where one rounding step of the result is up to 8e-3 in bfloat16 and 1e-3
# in float16. dv reaches about 5.7, where a step is up to 1.6e-2 in bfloat16, and grad_out is
# rounded before use, so the gradient tolerances are looser.
HALF_CASES = [(torch.bfloat16, 2e-2, 3e-2), (torch.float16, 5e-3, 1e-2)]


@pytest.mark.parametrize("dtype,out_atol,grad_atol", HALF_CASES, ids=["bfloat16", "float16"])
def test_half_precision_matches_fp32_naive(dtype, out_atol, grad_atol):
    q, k, v = make_qkv(2, 2, 33, 33, 16, dtype=dtype, seed=7, requires_grad=True)
    grad_out = torch.randn(2, 2, 33, 16, generator=torch.Generator().manual_seed(8)).to(dtype)
    out = flash_attention(q, k, v, causal=True, block_q=16, block_k=8)
    assert out.dtype == dtype

    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    expected = naive_attention(q32, k32, v32, causal=True)
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=out_atol)

    dq, dk, dv = grads(out, (q, k, v), grad_out)
    dq_ref, dk_ref, dv_ref = grads(expected, (q32, k32, v32), grad_out.float())
    assert dq.dtype == dtype
    torch.testing.assert_close(dq.float(), dq_ref, rtol=0, atol=grad_atol)
    torch.testing.assert_close(dk.float(), dk_ref, rtol=0, atol=grad_atol)
    torch.testing.assert_close(dv.float(), dv_ref, rtol=0, atol=grad_atol)


@pytest.mark.parametrize("causal,Lq,Lk", [(False, 6, 6), (True, 6, 6), (True, 4, 7), (False, 7, 5)])
def test_gradcheck_float64(causal, Lq, Lk):
    q, k, v = make_qkv(1, 1, Lq, Lk, 4, dtype=torch.float64, seed=9, requires_grad=True)

    def attention(q, k, v):
        return flash_attention(q, k, v, causal=causal, block_q=4, block_k=4)

    assert torch.autograd.gradcheck(attention, (q, k, v))


def test_gradcheck_float64_with_masked_row():
    q, k, v = make_qkv(1, 2, 6, 6, 4, dtype=torch.float64, seed=10, requires_grad=True)
    mask = torch.ones(1, 2, 6, 6, dtype=torch.bool)
    mask[0, 1, 2] = False

    def attention(q, k, v):
        return flash_attention(q, k, v, attn_mask=mask, block_q=4, block_k=4)

    assert torch.autograd.gradcheck(attention, (q, k, v))


def test_no_tensor_grows_with_lq_times_lk():
    B, H, L, D, block = 1, 2, 2048, 16, 128
    q, k, v = make_qkv(B, H, L, L, D, seed=11, requires_grad=True)
    padding = torch.ones(B, 1, 1, L, dtype=torch.bool)
    padding[..., -100:] = False
    grad_out = torch.randn(B, H, L, D)

    forward = OpRecorder()
    with forward:
        out = flash_attention(q, k, v, causal=True, attn_mask=padding, block_q=block, block_k=block)
    backward = OpRecorder()
    with backward:
        grads(out, (q, k, v), grad_out)

    # q, k, v, out, dq, dk and dv are each B * H * L * D floats. Beyond those, the tiles of
    # scores, probabilities and their gradients may exist, each B * H * block * block floats.
    largest_io = B * H * L * D * 4
    tile = B * H * block * block * 4
    limit = largest_io + 4 * tile
    score_matrix = B * H * L * L * 4
    assert limit * 10 < score_matrix
    assert backward.count(MATMUL_OPS) > 0  # the recorder saw the backward as well
    assert forward.max_bytes <= limit
    assert backward.max_bytes <= limit


def test_recorder_catches_naive_score_matrix():
    # The memory check above can fail: the same recorder sees the full matrix of the naive version.
    B, H, L, D = 1, 2, 256, 16
    q, k, v = make_qkv(B, H, L, L, D, seed=12)
    recorder = OpRecorder()
    with recorder:
        naive_attention(q, k, v, causal=True)
    assert recorder.max_bytes >= B * H * L * L * 4


@pytest.mark.parametrize("causal,visited_tiles", [(False, 16), (True, 10)])
def test_causal_skips_masked_key_tiles(causal, visited_tiles):
    # 64 queries and keys in tiles of 16 form a 4 x 4 grid. Causal visits the 1 + 2 + 3 + 4 tiles
    # on or below the diagonal. Each visited tile costs 2 matmuls forward (S, P V) and 5 backward.
    q, k, v = make_qkv(1, 2, 64, 64, 8, seed=13, requires_grad=True)
    forward = OpRecorder()
    with forward:
        out = flash_attention(q, k, v, causal=causal, block_q=16, block_k=16)
    backward = OpRecorder()
    with backward:
        grads(out, (q, k, v), torch.randn_like(out))
    assert forward.count(MATMUL_OPS) == 2 * visited_tiles
    assert backward.count(MATMUL_OPS) == 5 * visited_tiles


INVALID_CASES = [
    # q shape, k shape, v shape, mask, block_q, message fragment
    ((2, 5, 8), (1, 2, 5, 8), (1, 2, 5, 8), None, 4, "4 dimensions"),
    ((1, 2, 5, 8), (1, 3, 5, 8), (1, 3, 5, 8), None, 4, "share (B, H)"),
    ((1, 2, 5, 8), (1, 2, 5, 4), (1, 2, 5, 8), None, 4, "head width"),
    ((1, 2, 5, 8), (1, 2, 5, 8), (1, 2, 6, 8), None, 4, "key length"),
    ((1, 2, 5, 8), (1, 2, 5, 8), (1, 2, 5, 8), torch.ones(1, 2, 5, 5), 4, "bool"),
    ((1, 2, 5, 8), (1, 2, 5, 8), (1, 2, 5, 8), torch.ones(1, 2, 3, 5, dtype=torch.bool), 4, "broadcast"),
    ((1, 2, 5, 8), (1, 2, 5, 8), (1, 2, 5, 8), None, 0, "block_q"),
]


@pytest.mark.parametrize("q_shape,k_shape,v_shape,mask,block_q,message", INVALID_CASES)
def test_invalid_inputs_raise(q_shape, k_shape, v_shape, mask, block_q, message):
    q, k, v = torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape)
    with pytest.raises(ValueError, match=re.escape(message)):
        flash_attention(q, k, v, attn_mask=mask, block_q=block_q)
