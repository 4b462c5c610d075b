"""T5's attention on flex_attention (ptlab.models.flex) against the dense-bias path it replaces: values and the
gradients of q, k, v and the learned bias table, with padding, the decoder's causal mask (also with a KV cache's
offset), cross-attention, and offsets beyond `max_distance`.

flex_attention is compiled only on GPUs here; on CPU its eager implementation (the same score_mod and mask_mod,
unfused) checks the function. torch refuses a CPU backward in one input check only (its eager backward is
device-independent), so the fixture lifts that check for these tests.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.attention.flex_attention as torch_flex

from ptlab.config import ModelConfig
from ptlab.models import build_model
from ptlab.models.flex import flex_bias, use_flex_attention
from ptlab.models.kernels import attention
from ptlab.models.layers import RelativePositionBias, relative_position_bucket
from ptlab.models.masks import add_biases, causal_bias, padding_bias


@pytest.fixture(autouse=True)
def cpu_flex_backward(monkeypatch):
    monkeypatch.setattr(torch_flex, "_validate_device", lambda *tensors: None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        yield


def _inputs(batch, heads, query_length, key_length, d_head=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, query_length, d_head, generator=g)
    k, v = (torch.randn(batch, heads, key_length, d_head, generator=g) for _ in range(2))
    return [t.requires_grad_() for t in (q, k, v)]


def _padding(batch, key_length, seed=0):
    """1 = real token; every row keeps at least its first few keys, the rest of some rows is padding."""
    lengths = torch.randint(3, key_length + 1, (batch,), generator=torch.Generator().manual_seed(seed))
    lengths[0] = key_length
    return (torch.arange(key_length)[None, :] < lengths[:, None]).long()


def _both_paths(table: RelativePositionBias | None, query_length, key_length, offset, mask, causal, heads=3):
    """Outputs and gradients (q, k, v, then the bias table's) of the dense path and of the flex path."""
    results = []
    for flex in (False, True):
        q, k, v = _inputs(mask.shape[0] if mask is not None else 2, heads, query_length, key_length)
        if flex:
            diagonals = table.diagonals(query_length, key_length, offset) if table is not None else None
            out = flex_bias(diagonals, query_length, key_length, mask, causal, q.device).attend(q, k, v, 1.0)
        else:
            bias = add_biases(table(query_length, key_length, offset) if table is not None else None,
                              padding_bias(mask), causal_bias(query_length, key_length, q.device) if causal else None)
            out = attention(q, k, v, bias, scale=1.0)
        # a fixed random projection of the output, so every output entry gets its own gradient
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        params = [q, k, v] + ([table.embedding.weight] if table is not None else [])
        grads = torch.autograd.grad((out * weights).sum(), params)
        results.append((out.detach(), grads))
    return results


def _assert_close(results, atol=1e-5):
    (dense, dense_grads), (flex, flex_grads) = results
    torch.testing.assert_close(flex, dense, atol=atol, rtol=1e-4)
    for name, got, want in zip(("q", "k", "v", "bias table"), flex_grads, dense_grads):
        assert want.abs().max() > 0, name  # the oracle has something to check
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_encoder_self_attention_with_padding():
    torch.manual_seed(0)
    table = RelativePositionBias(3, bidirectional=True, num_buckets=32, max_distance=128)
    _assert_close(_both_paths(table, 37, 37, 0, _padding(3, 37), causal=False))


@pytest.mark.parametrize("query_length, key_length", [(29, 29), (5, 21)])  # training; a KV cache's last steps
def test_decoder_causal_self_attention(query_length, key_length):
    torch.manual_seed(0)
    table = RelativePositionBias(3, bidirectional=False, num_buckets=32, max_distance=128)
    _assert_close(_both_paths(table, query_length, key_length, key_length - query_length, None, causal=True))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_offsets_beyond_max_distance(bidirectional):
    """Offsets up to 70 with max_distance 12: most pairs share the last, clamped buckets, whose gradients sum
    over many diagonals."""
    torch.manual_seed(0)
    table = RelativePositionBias(3, bidirectional=bidirectional, num_buckets=8, max_distance=12)
    far = relative_position_bucket(torch.tensor([-12, -70]), bidirectional, 8, 12)
    assert far[0] == far[1]  # the test reaches the clamped buckets
    _assert_close(_both_paths(table, 71, 71, 0, _padding(2, 71), causal=not bidirectional))


def test_cross_attention_with_padding():
    """T5's cross-attention has no position bias: only the encoder's padding."""
    _assert_close(_both_paths(None, 11, 26, 0, _padding(3, 26), causal=False))


def _tiny_t5() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(family="t5", vocab_size=64, d_model=32, d_kv=8, num_heads=4, num_layers=2, d_ff=48,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16)
    cfg.validate()
    return build_model(cfg).train()


def test_t5_model_on_flex_matches_dense():
    """The whole model, forced onto flex and off it: logits and every parameter's gradient."""
    model = _tiny_t5()
    g = torch.Generator().manual_seed(2)
    input_ids, decoder_ids = torch.randint(3, 64, (3, 30), generator=g), torch.randint(3, 64, (3, 19), generator=g)
    mask = _padding(3, 30, seed=3)
    results = []
    for forced in (False, True):
        model.flex_attention = forced
        model.zero_grad(set_to_none=True)
        logits = model(input_ids, decoder_ids, mask)
        (logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (dense, dense_grads), (flex, flex_grads) = results
    torch.testing.assert_close(flex, dense, atol=1e-4, rtol=1e-4)
    for name, want in dense_grads.items():
        torch.testing.assert_close(flex_grads[name], want, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    assert dense_grads["encoder_position_bias.embedding.weight"].abs().max() > 0
    assert dense_grads["decoder_position_bias.embedding.weight"].abs().max() > 0


def test_flex_is_chosen_for_compiled_cuda_only(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not use_flex_attention(cuda, 0.0, cached=False)  # eager: the unfused flex would be slower
    assert not use_flex_attention(cpu, 0.0, cached=False)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert use_flex_attention(cuda, 0.0, cached=False)
    assert not use_flex_attention(cpu, 0.0, cached=False)  # torch 2.13 has no CPU flex backward
    assert not use_flex_attention(cuda, 0.1, cached=False)  # flex has no attention dropout
    assert not use_flex_attention(cuda, 0.0, cached=True)  # generation appends keys step by step
    assert use_flex_attention(cpu, 0.0, cached=False, forced=True)
    assert not use_flex_attention(cuda, 0.0, cached=False, forced=False)


def test_t5_keeps_the_dense_path_by_default_on_cpu():
    """Unforced on CPU the model never reaches flex_attention (which would refuse a CPU backward)."""
    model = _tiny_t5()
    ids = torch.randint(3, 64, (2, 9))
    called = []
    original = torch_flex.flex_attention

    def spy(*args, **kwargs):
        called.append(1)
        return original(*args, **kwargs)

    import ptlab.models.flex as flex_module
    flex_module.flex_attention, saved = spy, flex_module.flex_attention
    try:
        model(ids, ids).sum().backward()
        model.flex_attention = True
        model(ids, ids)
    finally:
        flex_module.flex_attention = saved
    assert len(called) == 3 * 2  # forced on: two encoder layers, two decoder self- and two cross-attentions



@pytest.mark.slow  # ~15 s of tracing on 2 busy cores
def test_t5_on_flex_traces_as_one_compiled_graph():
    """What a CUDA run compiles, short of the GPU kernels: dynamo traces the block masks built inside the graph
    and the bias closed over by score_mod, in one graph (backend aot_eager runs it on the eager kernels). Only
    the forward: AOT autograd's eager stand-in for flex's backward drops the gradients of score_mod's captured
    tensors on CPU (torch 2.13), which the GPU kernels compute; the eager tests above check those gradients."""
    model = _tiny_t5().eval()
    g = torch.Generator().manual_seed(4)
    input_ids, decoder_ids = torch.randint(3, 64, (2, 24), generator=g), torch.randint(3, 64, (2, 9), generator=g)
    mask = _padding(2, 24, seed=5)
    with torch.no_grad():
        model.flex_attention = False
        want = model(input_ids, decoder_ids, mask)
        model.flex_attention = True
        torch._dynamo.reset()
        try:
            got = torch.compile(model, backend="aot_eager", fullgraph=True)(input_ids, decoder_ids, mask)
        finally:
            torch._dynamo.reset()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
