"""The LM head and the cross-entropy fused, in chunks of tokens: the summed token loss straight from the final
hidden states, without ever holding the logits of the whole batch.

At a 32k vocabulary a batch of 8 x 512 tokens has 128M logits: 256 MiB in bf16, 512 MiB once upcast to float32 for
the softmax, and as much again for their gradient; the model's own activations are a fraction of that. Here the
forward keeps only each token's log-sum-exp (4 bytes a token), and the backward recomputes one chunk's logits at a
time to turn them into the hidden states' and the head weight's gradients (Liger's fused linear cross-entropy and
torchtune's chunked loss do the same). The price is the head's matmul done once more, in the backward.

Every family's head is one `OutputHead`: logits = (hidden * scale) @ weight.T + bias, where scale is T5 v1.0's
d_model**-0.5 before its tied head and bias BART's `final_logits_bias`. The models compute their logits through
the same object, so the fused loss and the logits used for evaluation and generation cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class OutputHead:
    weight: torch.Tensor  # [vocab, d_model]: an untied head, or the token embedding
    bias: torch.Tensor | None = None  # [vocab] or [1, vocab], added to the logits in their dtype (not trained here)
    scale: float = 1.0  # multiplies the hidden states before the head

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden * self.scale if self.scale != 1.0 else hidden
        logits = x @ self.weight.t()
        return logits + self.bias.to(logits.dtype) if self.bias is not None else logits


def head_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, head: OutputHead, chunk_tokens: int,
                  ignore_index: int = -100) -> torch.Tensor:
    """Summed cross-entropy of `head.logits(hidden)` (in float32) against `labels`, skipping `ignore_index`: the
    same value and gradients as `F.cross_entropy(head.logits(hidden).float(), labels, reduction="sum")`, with the
    logits computed `chunk_tokens` tokens at a time. `hidden` is [..., d_model], `labels` the matching [...].
    Under autocast the head's products run in the autocast dtype, as they would in the unfused model."""
    device_type = hidden.device.type
    compute_dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
                     else torch.promote_types(hidden.dtype, head.weight.dtype))
    return _chunk_by_chunk(hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1), head.weight, head.bias,
                           head.scale, chunk_tokens, ignore_index, compute_dtype)


@torch.compiler.disable
def _chunk_by_chunk(*args) -> torch.Tensor:
    # Eager even inside a compiled step: in one graph the chunks' products do not depend on one another, and the
    # compiler ran them side by side, holding every chunk's logits at once (measured on CPU at a 32k vocabulary:
    # the compiled fused step peaked above the compiled unfused one). Eagerly they run one after the other.
    return _HeadLossSum.apply(*args)


def _chunk_logits(hidden, weight, bias, scale, compute_dtype):
    """One chunk's logits, rounded as the unfused head rounds them, then in float32 (at least) for the softmax."""
    x = hidden * scale if scale != 1.0 else hidden
    logits = x.to(compute_dtype) @ weight.to(compute_dtype).t()
    if bias is not None:
        logits = logits + bias.reshape(-1).to(logits.dtype)
    return logits.to(torch.promote_types(compute_dtype, torch.float32))


class _HeadLossSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, labels, weight, bias, scale, chunk_tokens, ignore_index, compute_dtype):
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are chosen here, explicitly
            valid = labels != ignore_index
            targets = labels.masked_fill(~valid, 0)
            wide = torch.promote_types(compute_dtype, torch.float32)
            lse_chunks, total = [], hidden.new_zeros((), dtype=wide)
            for start in range(0, hidden.shape[0], chunk_tokens):
                rows = slice(start, start + chunk_tokens)
                logits = _chunk_logits(hidden[rows], weight, bias, scale, compute_dtype)
                target_logits = logits.gather(1, targets[rows, None]).squeeze(1)
                # log-sum-exp in place: the chunk's float32 logits are the only chunk-sized buffer
                row_max = logits.amax(dim=-1)
                lse = row_max + logits.sub_(row_max[:, None]).exp_().sum(dim=-1).log()
                total = total + ((lse - target_logits) * valid[rows]).sum()
                lse_chunks.append(lse)
            lse = torch.cat(lse_chunks) if lse_chunks else hidden.new_zeros((0,), dtype=wide)
        ctx.save_for_backward(hidden, weight, bias, targets, valid, lse)
        ctx.scale, ctx.chunk_tokens, ctx.compute_dtype = scale, chunk_tokens, compute_dtype
        return total

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, targets, valid, lse = ctx.saved_tensors
        scale, chunk_tokens, compute_dtype = ctx.scale, ctx.chunk_tokens, ctx.compute_dtype
        need_hidden, _, need_weight, need_bias = ctx.needs_input_grad[:4]
        with torch.autocast(hidden.device.type, enabled=False):
            weight_low = weight.to(compute_dtype)
            grad_hidden = []
            wide = lse.dtype
            grad_weight = torch.zeros_like(weight, dtype=wide) if need_weight else None
            grad_bias = torch.zeros(weight.shape[0], dtype=wide, device=weight.device) if need_bias else None
            for start in range(0, hidden.shape[0], chunk_tokens):
                rows = slice(start, start + chunk_tokens)
                row_grad = grad * valid[rows]
                # softmax minus the one-hot target, set at the target in float32 (see kernels.cross_entropy_sum),
                # in place: one chunk-sized float32 buffer at a time when run eagerly
                probs = _chunk_logits(hidden[rows], weight, bias, scale, compute_dtype)
                grad_logits = probs.sub_(lse[rows, None]).exp_().mul_(row_grad[:, None])
                index = torch.arange(grad_logits.shape[0], device=grad_logits.device)
                at_target = grad_logits[index, targets[rows]] - row_grad
                grad_logits = grad_logits.index_put_((index, targets[rows]), at_target).to(compute_dtype)
                if need_hidden:
                    chunk_grad = grad_logits @ weight_low
                    grad_hidden.append(chunk_grad.to(wide) * scale if scale != 1.0 else chunk_grad)
                if need_weight:
                    x = hidden[rows] * scale if scale != 1.0 else hidden[rows]
                    grad_weight = grad_weight + (grad_logits.t() @ x.to(compute_dtype)).to(wide)
                if need_bias:
                    grad_bias = grad_bias + grad_logits.to(wide).sum(0)
        if need_hidden:
            grad_hidden = (torch.cat(grad_hidden) if grad_hidden else torch.zeros_like(hidden)).to(hidden.dtype)
        else:
            grad_hidden = None
        if need_weight:
            grad_weight = grad_weight.to(weight.dtype)
        if need_bias:
            grad_bias = grad_bias.reshape(bias.shape).to(bias.dtype)
        return grad_hidden, None, grad_weight, grad_bias, None, None, None, None
