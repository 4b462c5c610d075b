"""Moving batches to the model: numpy batches to tensors, the masks that matter, autocast, the logits."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import nn

from ptlab.data.pipeline import IGNORE_INDEX
from ptlab.models.head_loss import label_log_probs
from ptlab.precision import resolve_precision


def autocast(precision: str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """bf16 autocast for `train.precision` bf16 (or auto, where the device computes bf16 natively); none for fp32."""
    if resolve_precision(precision, torch.device(device)) == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_tensors(batch: dict[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Numpy arrays as tensors on `device`. To a GPU they go through pinned host memory, copied without waiting
    (the host goes on to queue the step's kernels while the batch is in flight)."""
    if torch.device(device).type != "cuda":
        return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
    return {k: torch.from_numpy(np.ascontiguousarray(v)).pin_memory().to(device, non_blocking=True)
            for k, v in batch.items()}


def batch_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    if "decoder_input_ids" in batch:
        return model(batch["input_ids"], batch["decoder_input_ids"], batch.get("attention_mask"))
    return model(batch["input_ids"], position_ids=batch["position_ids"], segment_ids=batch.get("segment_ids"),
                 prefix_mask=batch.get("prefix_mask"))


def batch_hidden(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The final hidden states before the LM head, through the model's forward (so DDP and FSDP see the call)."""
    if "decoder_input_ids" in batch:
        return model(batch["input_ids"], batch["decoder_input_ids"], batch.get("attention_mask"), return_hidden=True)
    return model(batch["input_ids"], position_ids=batch["position_ids"], segment_ids=batch.get("segment_ids"),
                 prefix_mask=batch.get("prefix_mask"), return_hidden=True)


def batch_label_log_probs(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(label) at every position of the batch's labels (0 where ignored), the head applied in chunks
    (`ptlab.models.head_loss.label_log_probs`): every pass that scores text goes through here, so none holds a
    batch's whole logits."""
    return label_log_probs(batch_hidden(model, batch), batch["labels"], unwrapped(model).output_head(), IGNORE_INDEX)


def unwrapped(model: nn.Module) -> nn.Module:
    """The ptlab model inside a DistributedDataParallel wrapper (FSDP2 shards in place and wraps nothing)."""
    return getattr(model, "module", model)


def model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch without the masks that change nothing, decided here on the host: no padding in an encoder-decoder
    batch (the encoder's position bias then stays one [heads, length, length] table instead of one per row, and
    cross-attention needs no mask), no packed row and no prefix in a decoder-only batch (plain causal attention,
    which the model would otherwise have to check for, costing a device sync and a break in a compiled graph)."""
    batch = dict(batch)
    if "attention_mask" in batch and batch["attention_mask"].all():
        del batch["attention_mask"]
    if "segment_ids" in batch and batch["segment_ids"].max(initial=0) <= 1:
        del batch["segment_ids"]
    if "prefix_mask" in batch and not batch["prefix_mask"].any():
        del batch["prefix_mask"]
    return batch


def batch_tokens(batch: dict[str, np.ndarray]) -> int:
    """Tokens the model reads and predicts in a batch (for throughput)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum()) + int((batch["labels"] != IGNORE_INDEX).sum())
    return int((batch["segment_ids"] > 0).sum())


def target_bytes(labels: np.ndarray | torch.Tensor, token_bytes: np.ndarray) -> int:
    """UTF-8 bytes of the text the labels that are not IGNORE_INDEX decode to (`PtlabTokenizer.token_bytes`:
    special tokens such as EOS and sentinels count 0), the denominator of bits per byte."""
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    labels = np.asarray(labels).reshape(-1)
    return int(token_bytes[labels[labels != IGNORE_INDEX]].sum())


def bits_per_byte(nats: float, num_bytes: int) -> float | None:
    """A summed negative log-likelihood in nats as bits per byte of `num_bytes` bytes (None for no bytes)."""
    return nats / (math.log(2) * num_bytes) if num_bytes > 0 else None
