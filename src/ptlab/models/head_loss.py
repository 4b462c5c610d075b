"""The LM head and the cross-entropy fused, in chunks of tokens: the summed token loss straight from the final
hidden states, without ever holding the logits of the whole batch.

At a 32k vocabulary a batch of 8 x 512 tokens has 128M logits: 256 MiB in bf16, 512 MiB once upcast to float32 for
the softmax, and as much again for their gradient; the model's own activations are a fraction of that. Here each
chunk's logits are computed once, in the forward, and turned at once into the chunk's loss and its gradients for
the hidden states and the head's weight (the loss is a sum, so the gradient that reaches it later only scales
them); the backward multiplies by that scale. Liger's fused linear cross-entropy does the same on GPUs. What stays
between forward and backward is one gradient the size of the hidden states and one the size of the head.

Every family's head is one `OutputHead`: logits = (hidden * scale) @ weight.T + bias, where scale is T5 v1.0's
d_model**-0.5 before its tied head and bias BART's `final_logits_bias`. The models compute their logits through
the same object, so the fused loss and the logits used for evaluation and generation cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptlab.precision import resolve_precision


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
    Under autocast the head's products run in the autocast dtype, as they would in the unfused model. Called
    inside a compiled step, each chunk runs through a small compiled graph of its own (`CHUNK_COMPILE_BACKEND`)."""
    device_type = hidden.device.type
    compute_dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
                     else torch.promote_types(hidden.dtype, head.weight.dtype))
    return _chunk_by_chunk(hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1), head.weight, head.bias,
                           head.scale, chunk_tokens, ignore_index, compute_dtype, torch.compiler.is_compiling())


CHUNK_COMPILE_BACKEND = "inductor"  # what compiles the chunk kernel inside a compiled step


@torch._disable_dynamo  # torch.compiler.disable, with the compiler imported at the first call, not here (2 s)
def _chunk_by_chunk(*args) -> torch.Tensor:
    # Outside the step's graph: in one graph the chunks do not depend on one another, and the compiler ran them
    # side by side, holding every chunk's logits at once (measured on CPU at a 32k vocabulary: the compiled fused
    # step peaked above the compiled unfused one). Here they run one after the other, each through one small graph.
    return _HeadLossSum.apply(*args)


def _chunk_loss(logits, targets, valid):
    """One chunk's logits (in the compute dtype, rounded as the unfused head rounds them) taken to float32 at least
    for the softmax, their log-sum-exp, the targets' logits and the chunk's summed loss."""
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    lse = torch.logsumexp(wide, dim=-1)
    target_logits = wide.gather(1, targets[:, None]).squeeze(1)
    return wide, lse, target_logits, ((lse - target_logits) * valid).sum()


def _loss_only(logits, targets, valid):
    return _chunk_loss(logits, targets, valid)[-1]


def _loss_and_logit_gradients_(logits, targets, valid):
    """One chunk's summed loss, and the gradient of that sum at each target; the logits are overwritten with the
    softmax, the rest of their gradient. The caller sets the targets' entries: softmax minus the one-hot target,
    computed in float32 as kernels.cross_entropy_sum does instead of comparing every index with the target, and
    set apart so that the compiled kernel writes the softmax in place, with no second chunk-sized buffer."""
    wide, lse, target_logits, loss = _chunk_loss(logits, targets, valid)
    row_grad = valid.to(lse.dtype)
    # in place on the float32 copy: run eagerly, one chunk-sized float32 buffer at a time
    logits.copy_(wide.sub_(lse[:, None]).exp_().mul_(row_grad[:, None]))
    return loss, ((torch.exp(target_logits - lse) - 1.0) * row_grad).to(logits.dtype)


_compiled_kernels: dict = {}


def _chunk_kernel(compiled: bool, want_gradients: bool):
    kernel = _loss_and_logit_gradients_ if want_gradients else _loss_only
    if not compiled:
        return kernel
    key = (kernel, CHUNK_COMPILE_BACKEND)
    if key not in _compiled_kernels:
        # every chunk has one shape (the last one padded), so one graph serves every batch
        _compiled_kernels[key] = torch.compile(kernel, backend=CHUNK_COMPILE_BACKEND, dynamic=False)
    return _compiled_kernels[key]


def _chunks(tokens: int, chunk_tokens: int, compiled: bool) -> tuple[range, int]:
    """The chunks' first rows, and their length. Eagerly, `chunk_tokens` or the batch's token count if smaller.
    Compiled, every chunk has the same number of rows, the last one padded with ignored tokens: `chunk_tokens`, or
    for a batch smaller than that the next power of two above its token count (16 at least), so that a few graphs
    serve batches of any size."""
    rows = chunk_tokens
    if tokens < chunk_tokens:
        rows = max(16, 1 << max(tokens - 1, 0).bit_length()) if compiled else max(tokens, 1)
    return range(0, tokens, rows), rows


def _padded(tensor: torch.Tensor, start: int, rows: int, fill=0) -> torch.Tensor:
    part = tensor[start:start + rows]
    if part.shape[0] == rows:
        return part
    padded = tensor.new_full((rows, *tensor.shape[1:]), fill)
    padded[:part.shape[0]] = part
    return padded


class _HeadLossSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, labels, weight, bias, scale, chunk_tokens, ignore_index, compute_dtype, compiled):
        need_hidden, _, need_weight, need_bias = ctx.needs_input_grad[:4]
        want_gradients = need_hidden or need_weight or need_bias
        kernel = _chunk_kernel(compiled, want_gradients)
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are chosen here, explicitly
            valid = labels != ignore_index
            targets = labels.masked_fill(~valid, 0)
            weight_low = weight.to(compute_dtype)
            wide = torch.promote_types(compute_dtype, torch.float32)
            total = hidden.new_zeros((), dtype=wide)
            tokens, vocab = hidden.shape[0], weight.shape[0]
            grad_hidden = torch.empty_like(hidden, dtype=wide) if need_hidden else None
            grad_weight = torch.zeros_like(weight, dtype=wide) if need_weight else None
            grad_bias = torch.zeros(vocab, dtype=wide, device=weight.device) if need_bias else None
            starts, rows = _chunks(tokens, chunk_tokens, compiled)
            buffer = hidden.new_empty((rows, vocab), dtype=compute_dtype)  # every chunk's logits, in turn
            index = torch.arange(rows, device=hidden.device)
            block_rows = max(1, rows * vocab // (32 * hidden.shape[1]))
            for start in starts:
                kept = min(rows, tokens - start)
                width = rows if compiled else kept  # only the compiled kernel wants the last chunk padded
                logits = buffer[:width]
                x = hidden[start:start + kept] * scale if scale != 1.0 else hidden[start:start + kept]
                x_low = x.to(compute_dtype)
                torch.mm(_padded(x_low, 0, width), weight_low.t(), out=logits)
                if bias is not None:
                    logits += bias.reshape(-1).to(compute_dtype)
                chunk_targets, chunk_valid = _padded(targets, start, width), _padded(valid, start, width, False)
                if not want_gradients:
                    total = total + kernel(logits, chunk_targets, chunk_valid)
                    continue
                loss, at_target = kernel(logits, chunk_targets, chunk_valid)
                total = total + loss
                logits[index[:width], chunk_targets] = at_target
                grad_logits = logits[:kept]
                if need_hidden:
                    grad_hidden[start:start + kept] = grad_logits @ weight_low
                if need_weight:
                    # in blocks of vocabulary rows, each product a 32nd of the chunk's logits
                    for first in range(0, vocab, block_rows):
                        block = slice(first, first + block_rows)
                        grad_weight[block].add_(grad_logits[:, block].t() @ x_low)
                if need_bias:
                    grad_bias += grad_logits.sum(0, dtype=wide)
        if need_hidden and scale != 1.0:
            grad_hidden *= scale
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = hidden.dtype, weight.dtype, None if bias is None else (bias.shape, bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad):
        # The forward's gradients are those of the summed loss: the gradient reaching it scales them, in place (a
        # copy of the head-sized gradient would come while the model's activations are all still held, the step's
        # peak). Differentiating a retained graph again therefore fails, with PyTorch's error for a saved tensor
        # modified in place, rather than give gradients scaled twice.
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        hidden_dtype, weight_dtype, bias_like = ctx.dtypes
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(grad).to(hidden_dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad).to(weight_dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.mul_(grad).reshape(bias_like[0]).to(bias_like[1])
        return grad_hidden, None, grad_weight, grad_bias, None, None, None, None, None


# A chunk's logits, when the chunk is sized by the vocabulary: 64 MiB in float32, whatever the vocabulary
CHUNK_LOGITS = 1 << 24
# Scoring keeps a quarter of that, 16 MiB: its chunk's logits, their float32 copy and logsumexp's temporaries come
# on top of a trained model's weights, gradients and optimizer state, and at 32k 512-token chunks made a validation
# pass raise a run's process peak by 160 MB where 128-token ones add 60 MB (and score a little faster, in cache)
SCORING_CHUNK_LOGITS = CHUNK_LOGITS // 4
# train.loss_chunk_tokens auto fuses the head and loss where a token's logits take this many bytes: from 64k ids in
# float32, 128k in bf16. Below, the whole logits measured faster on a 2-core AMX Xeon, compiled (fused: 0.88x the
# tokens/s in fp32 at 32k, saving 379 MB; 0.83x in bf16 at 32k and 0.62x at 64k, saving at most 160 MB;
# benchmarks/results/memory-cpu*.md): auto fuses where a batch's whole logits run to gigabytes
FUSE_FROM_ROW_BYTES = 256 * 1024


def scoring_chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk when scoring: a whole small-vocabulary batch (2,048 tokens at 2k) in one product, a 32k
    one 128 at a time."""
    return max(16, SCORING_CHUNK_LOGITS // max(vocab_size, 1))


def fused_chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk of the fused head and loss: `CHUNK_LOGITS` logits (512 tokens at 32k), 256 at least."""
    return max(256, CHUNK_LOGITS // vocab_size)


def training_chunk_tokens(setting: int | str, vocab_size: int, precision: str) -> int:
    """`train.loss_chunk_tokens` for a model of `vocab_size` tokens trained in `precision`, auto resolved: fused
    (`fused_chunk_tokens`) where a token's logits take `FUSE_FROM_ROW_BYTES` or more, unfused below, where the
    unfused step is faster and the whole logits small enough."""
    if setting != "auto":
        return setting
    row_bytes = vocab_size * (2 if resolve_precision(precision) == "bf16" else 4)
    return fused_chunk_tokens(vocab_size) if row_bytes >= FUSE_FROM_ROW_BYTES else 0


@torch.no_grad()
def label_log_probs(hidden: torch.Tensor, labels: torch.Tensor, head: OutputHead, ignore_index: int = -100,
                    chunk_tokens: int | None = None) -> torch.Tensor:
    """log p(label) at every position of `labels` ([...], float32; 0 where the label is `ignore_index`), from the
    final hidden states ([..., d_model]) through `head`, `chunk_tokens` tokens at a time (default: by the
    vocabulary, `scoring_chunk_tokens`): what evaluation and scoring need, without ever holding the whole batch's
    logits. The products run in the autocast dtype when autocast is on, the softmax in float32, as the loss does."""
    chunk = chunk_tokens or scoring_chunk_tokens(head.weight.shape[0])
    flat_hidden, flat_labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    out = torch.zeros(flat_labels.shape, dtype=torch.float32, device=hidden.device)
    for start in range(0, flat_labels.shape[0], chunk):
        part = flat_labels[start:start + chunk]
        valid = part != ignore_index
        logits = head.logits(flat_hidden[start:start + chunk]).float()
        picked = logits.gather(1, part.masked_fill(~valid, 0)[:, None]).squeeze(1) - torch.logsumexp(logits, -1)
        out[start:start + chunk] = picked * valid
    return out.reshape(labels.shape)
