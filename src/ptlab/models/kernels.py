"""The hot spots of a training step, written so that a CPU compiles them well. Each computes the same function
as the PyTorch op it stands in for (tests compare values and gradients); only the work done differs.

- `attention`: on CPU, training, under `torch.compile`: SDPA's flash forward, and a backward written as five
  matrix products and two fused elementwise passes from the forward's saved log-sum-exp; a causal backward skips
  the blocks above the diagonal. PyTorch's CPU flash backward runs at a fifth of the bf16 matmul peak, and a mask
  that needs a gradient (T5's learned position bias) sends SDPA to its unfused math path.
- `cross_entropy_sum`: the gradient is written as softmax minus the one-hot target directly; the compiler's own
  decomposition of `F.cross_entropy`'s backward compares every vocabulary index to every label in 64-bit
  integers, which costs several times the softmax itself.
- `gelu_tanh`: GELU's tanh approximation as x * sigmoid(2u), the same function as 0.5 x (1 + tanh(u)), because
  the CPU's vectorized sigmoid is two to three times faster than its tanh.
- `toeplitz`: T5's relative position bias built from one value per key - query offset, so its gradient is a sum
  along diagonals instead of a scatter-add over every (query, key) entry.
`attention` and `cross_entropy_sum` are the PyTorch ops themselves elsewhere (GPU, eager, inference, dropout);
`gelu_tanh` takes the sigmoid form whenever it is compiled on a CPU, inference included.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _compiled_cpu_training(*tensors: torch.Tensor | None) -> bool:
    first = tensors[0]
    return (first.device.type == "cpu" and torch.is_grad_enabled() and torch.compiler.is_compiling()
            and any(t is not None and t.requires_grad for t in tensors))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              is_causal: bool = False, scale: float | None = None, dropout: float = 0.0) -> torch.Tensor:
    """`scaled_dot_product_attention` over [batch, heads, length, d_head] tensors; `k` and `v` may have fewer
    heads than `q` (grouped-query attention). `mask` is added to the scores."""
    gqa = k.shape[1] != q.shape[1]
    if dropout == 0.0 and _compiled_cpu_training(q, k, v, mask):
        if gqa:  # the flash kernel wants one key/value head per query head; autograd sums the copies' gradients
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return _CpuAttention.apply(q, k, v, mask, is_causal, q.shape[-1] ** -0.5 if scale is None else scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                          dropout_p=dropout, enable_gqa=gqa)


class _CpuAttention(torch.autograd.Function):
    """Flash forward (saving the rows' log-sum-exp), and the matching backward as batched matrix products:
    P = exp(S - lse), dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dQ = dS K * scale, dK = dS^T Q * scale.
    The scores are recomputed in float32: rounded to bf16, scores of magnitude 10-25 put 4-9% errors into the
    gradients (flash's own backward: under 1%)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, is_causal, scale):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, is_causal, attn_mask=mask, scale=scale)
        ctx.save_for_backward(q, k, v, mask, out, lse)
        ctx.is_causal, ctx.scale = is_causal, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, mask, out, lse = ctx.saved_tensors
        grad_out = grad_out.to(q.dtype)
        length = q.shape[-2]
        blocks = min(MAX_CAUSAL_BLOCKS, length // MIN_CAUSAL_BLOCK)
        if not ctx.is_causal or mask is not None or length != k.shape[-2] or blocks < 2:
            grad_q, grad_k, grad_v, grad_scores = _attention_backward(
                q, k, v, out, grad_out, lse, mask, ctx.scale, ctx.is_causal)
            grad_mask = grad_scores.sum_to_size(mask.shape) if mask is not None and ctx.needs_input_grad[3] else None
            return grad_q, grad_k, grad_v, grad_mask, None, None
        # Causal: the queries of block b see only the keys of blocks 0..b, so the masked upper triangle's
        # blocks are skipped (3/8 of the work at 4 blocks; smaller blocks would make the products inefficient).
        grad_q, grad_k, grad_v = [], torch.zeros_like(k, dtype=torch.float32), torch.zeros_like(v, dtype=torch.float32)
        bounds = [length * b // blocks for b in range(blocks + 1)]
        for start, end in zip(bounds[:-1], bounds[1:]):
            rows = slice(start, end)
            block_q, block_k, block_v, _ = _attention_backward(
                q[..., rows, :], k[..., :end, :], v[..., :end, :], out[..., rows, :], grad_out[..., rows, :],
                lse[..., rows], None, ctx.scale, True, first_query=start)
            grad_q.append(block_q)
            grad_k = grad_k + F.pad(block_k.float(), (0, 0, 0, length - end))
            grad_v = grad_v + F.pad(block_v.float(), (0, 0, 0, length - end))
        return torch.cat(grad_q, dim=-2), grad_k.to(k.dtype), grad_v.to(v.dtype), None, None, None


MAX_CAUSAL_BLOCKS, MIN_CAUSAL_BLOCK = 4, 128  # query blocks of a causal backward, and their least length


def _attention_backward(q, k, v, out, grad_out, lse, mask, scale, is_causal, first_query=0):
    """Gradients of q, k, v and of the scores for a block of queries (the first being `first_query`) against
    keys 0..k.shape[-2]."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask
    if is_causal:  # SDPA's convention: query i sees keys 0..i
        future = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu(first_query + 1)
        scores = scores.masked_fill(future, float("-inf"))
    probs = torch.exp(scores - lse.unsqueeze(-1))
    grad_v = probs.to(q.dtype).transpose(-1, -2) @ grad_out
    row_dot = (grad_out.float() * out.float()).sum(-1, keepdim=True)
    grad_scores = probs * ((grad_out @ v.transpose(-1, -2)).float() - row_dot)
    grad_scores_low = grad_scores.to(q.dtype)
    grad_q = (grad_scores_low @ k) * scale
    grad_k = (grad_scores_low.transpose(-1, -2) @ q) * scale
    return grad_q, grad_k, grad_v, grad_scores


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Summed cross-entropy of [N, V] logits (computed in float32) against [N] labels, skipping `ignore_index`:
    `F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")`."""
    if _compiled_cpu_training(logits):
        return _CrossEntropySum.apply(logits, labels, ignore_index)
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")


class _CrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, ignore_index):
        valid = labels != ignore_index
        targets = labels.masked_fill(~valid, 0)
        wide = torch.promote_types(logits.dtype, torch.float32)
        lse = torch.logsumexp(logits.to(wide), dim=-1)
        target_logits = logits.gather(1, targets[:, None]).squeeze(1).to(wide)
        ctx.save_for_backward(logits, lse, targets, valid, target_logits)
        return ((lse - target_logits) * valid).sum()

    @staticmethod
    def backward(ctx, grad):
        logits, lse, targets, valid, target_logits = ctx.saved_tensors
        row_grad = grad * valid
        grad_logits = (torch.exp(logits.to(lse.dtype) - lse[:, None]) * row_grad[:, None]).to(logits.dtype)
        # the target's entry is (p - 1) * g: set once here, in float32, instead of comparing every index to it
        at_target = ((torch.exp(target_logits - lse) - 1.0) * row_grad).to(logits.dtype)
        rows = torch.arange(logits.shape[0], device=logits.device)
        grad_logits = grad_logits.index_put((rows, targets), at_target)
        return grad_logits, None, None


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation (`F.gelu(x, approximate="tanh")`), in float32 and returned in x's dtype."""
    if not torch.compiler.is_compiling() or x.device.type != "cpu":
        return F.gelu(x, approximate="tanh")
    return _gelu_tanh_by_sigmoid(x.float()).to(x.dtype)


def _gelu_tanh_by_sigmoid(x: torch.Tensor) -> torch.Tensor:
    # 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2 / pi) (x + 0.044715 x^3)
    return x * torch.sigmoid(2.0 * _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))


def toeplitz(diagonals: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """[..., rows + cols - 1] values -> [..., rows, cols] matrices whose entry (i, j) is value j - i + rows - 1,
    so each diagonal holds one value (T5's relative position bias, which depends on key - query only). The
    gradient sums each diagonal in two dense passes; an embedding lookup per entry would scatter-add instead."""
    return _Toeplitz.apply(diagonals, rows, cols)


class _Toeplitz(torch.autograd.Function):
    @staticmethod
    def forward(ctx, diagonals, rows, cols):
        ctx.rows, ctx.cols = rows, cols
        index = (torch.arange(cols, device=diagonals.device)[None, :]
                 - torch.arange(rows, device=diagonals.device)[:, None] + rows - 1)
        return diagonals[..., index]

    @staticmethod
    def backward(ctx, grad):
        rows, cols = ctx.rows, ctx.cols
        width = rows + cols - 1
        # Flip the rows and pad each to width + 1: read back with row length `width`, row r starts r places
        # further right, which puts entry (i, j) in column j - i + rows - 1. Summing the rows sums the diagonals.
        padded = F.pad(grad.flip(-2), (0, rows))
        skewed = padded.flatten(-2)[..., : rows * width].unflatten(-1, (rows, width))
        return skewed.sum(-2), None, None
