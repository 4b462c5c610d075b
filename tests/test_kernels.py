"""ptlab.models.kernels computes what the PyTorch ops it replaces compute: values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from ptlab.models import kernels


def _grads(fn, *inputs):
    inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) if x is not None else None for x in inputs]
    out = fn(*inputs)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype))
    return out.detach(), [x.grad for x in inputs if x is not None and x.requires_grad]


@pytest.mark.parametrize("case", ["causal", "causal-blocks", "bias", "padding", "cross", "causal-rectangular"])
def test_cpu_attention_matches_sdpa(case, monkeypatch):
    torch.manual_seed(0)
    batch, heads, queries, d_head = 2, 3, 7, 16
    if case == "causal-blocks":  # the causal backward in query blocks: 13 queries in blocks of 3 or 4
        queries = 13
        monkeypatch.setattr(kernels, "MIN_CAUSAL_BLOCK", 3)
    keys = {"cross": 11, "causal-rectangular": 10}.get(case, queries)
    q = torch.randn(batch, heads, queries, d_head)
    k, v = torch.randn(batch, heads, keys, d_head), torch.randn(batch, heads, keys, d_head)
    mask = None
    if case == "bias":  # a learned bias (T5's): its gradient is needed too
        mask = torch.randn(1, heads, queries, keys)
    elif case == "padding":
        mask = torch.zeros(batch, 1, 1, keys)
        mask[0, ..., -3:] = -1e9
    causal = case.startswith("causal")
    scale = 1.0 if case == "bias" else None

    def ours(q, k, v, mask):
        return kernels._CpuAttention.apply(q, k, v, mask, causal, d_head ** -0.5 if scale is None else scale)

    def reference(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)

    out, grads = _grads(ours, q, k, v, mask)
    expected, expected_grads = _grads(reference, q, k, v, mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    assert len(grads) == len(expected_grads)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("amplitude", [1.0, 3.0, 5.0])
def test_cpu_attention_gradients_in_bf16_are_as_accurate_as_flash(amplitude):
    """Against float32 gradients, in bf16, with scores of standard deviation 1 to 25 (trained models reach them):
    within 2x of SDPA's flash backward."""
    torch.manual_seed(0)
    q, k = (torch.randn(2, 4, 64, 32) * amplitude for _ in range(2))
    v, grad = torch.randn(2, 4, 64, 32), torch.randn(2, 4, 64, 32).bfloat16()
    low = [x.bfloat16() for x in (q, k, v)]

    def grads(fn, dtype):
        inputs = [x.to(dtype, copy=True).requires_grad_() for x in low]
        fn(*inputs).backward(grad.to(dtype))
        return [x.grad.float() for x in inputs]

    expected = grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), torch.float32)

    def error(fn):
        return max(float((got - want).norm() / want.norm()) for got, want in zip(grads(fn, torch.bfloat16), expected))

    flash = error(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    ours = error(lambda q, k, v: kernels._CpuAttention.apply(q, k, v, None, True, 32 ** -0.5))
    assert ours < 2 * flash + 1e-3, (ours, flash)


def _compiled(fn, *inputs):
    """fn compiled for CPU training: its output, the inputs' gradients, and the ops of the forward and backward
    graphs the compiler received."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    ops = {"forward": [], "backward": []}

    def recorder(part):
        def compiler(graph, _inputs):
            ops[part].extend(str(node.target) for node in graph.graph.nodes if node.op == "call_function")
            return make_boxed_func(graph)
        return compiler

    torch._dynamo.reset()
    try:
        backend = aot_autograd(fw_compiler=recorder("forward"), bw_compiler=recorder("backward"))
        out, grads = _grads(torch.compile(fn, backend=backend), *inputs)
    finally:
        torch._dynamo.reset()
    return out, grads, ops


BF16_ROUNDING = 2.0 ** -8  # bf16 keeps 8 significant bits: a rounding errs by at most half of 2^-7


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def test_attention_dispatches_to_the_cpu_kernel_when_compiled_for_training():
    """Compiled on CPU with gradients, attention is the flash forward and the kernel's own backward; grouped-query
    attention and a learned bias still match SDPA."""
    torch.manual_seed(0)
    q = torch.randn(2, 4, 9, 8, dtype=torch.bfloat16)
    k, v = torch.randn(2, 2, 9, 8, dtype=torch.bfloat16), torch.randn(2, 2, 9, 8, dtype=torch.bfloat16)
    bias = torch.randn(1, 4, 9, 9, dtype=torch.bfloat16)
    out, grads, ops = _compiled(lambda q, k, v, bias: kernels.attention(q, k, v, bias).float(), q, k, v, bias)
    # SDPA itself would run its math path here (the bias needs a gradient): softmax forward and backward
    assert any("flash_attention_for_cpu" in op for op in ops["forward"]), ops["forward"]
    assert not any("softmax" in op or "scaled_dot_product" in op for op in ops["backward"]), ops["backward"]
    # Against the exact function (float32 SDPA on the same bf16 values): the output within one bf16 rounding
    # (2^-8; measured 0.17%), each gradient within two, as its backward rounds the score gradient and then its
    # products (measured 0.34-0.50%; SDPA's own bf16 math path: 0.19-0.23%)
    expected, expected_grads = _grads(
        lambda q, k, v, bias: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True).float(),
        *(x.float() for x in (q, k, v, bias)))
    assert _relative_error(out, expected) < BF16_ROUNDING
    assert len(grads) == 4
    for got, want in zip(grads, expected_grads):
        assert got.dtype == torch.bfloat16 and _relative_error(got, want) < 2 * BF16_ROUNDING


def test_cross_entropy_sum_matches_torch():
    torch.manual_seed(0)
    logits = torch.randn(12, 17, dtype=torch.float64)
    labels = torch.randint(0, 17, (12,))
    labels[[2, 5]] = -100

    def ours(x):
        return kernels._CrossEntropySum.apply(x, labels, -100)

    out, (grad,) = _grads(ours, logits)
    expected, (expected_grad,) = _grads(
        lambda x: F.cross_entropy(x, labels, ignore_index=-100, reduction="sum"), logits)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert torch.all(grad[[2, 5]] == 0)
    assert torch.autograd.gradcheck(ours, (logits.clone().requires_grad_(),))


def test_cross_entropy_sum_in_bf16_follows_the_float32_loss():
    torch.manual_seed(0)
    logits = torch.randn(64, 1000).to(torch.bfloat16)
    labels = torch.randint(0, 1000, (64,))
    out, (grad,) = _grads(lambda x: kernels._CrossEntropySum.apply(x, labels, -100), logits)
    expected, (expected_grad,) = _grads(
        lambda x: F.cross_entropy(x.float(), labels, reduction="sum"), logits)
    assert out.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad.float(), expected_grad.float(), atol=1e-3, rtol=1e-2)


def test_gelu_tanh_is_the_tanh_approximation():
    x = torch.linspace(-12, 12, 10_001, dtype=torch.float64)
    torch.testing.assert_close(kernels._gelu_tanh_by_sigmoid(x), F.gelu(x, approximate="tanh"))
    assert torch.autograd.gradcheck(kernels._gelu_tanh_by_sigmoid, (torch.randn(20, dtype=torch.float64,
                                                                                 requires_grad=True),))


@pytest.mark.parametrize("rows, cols", [(5, 7), (7, 5), (1, 9), (6, 6)])
def test_toeplitz(rows, cols):
    diagonals = torch.randn(3, rows + cols - 1, dtype=torch.float64, requires_grad=True)
    out = kernels.toeplitz(diagonals, rows, cols)
    for i in range(rows):
        for j in range(cols):
            assert torch.equal(out[:, i, j], diagonals[:, j - i + rows - 1])
    assert torch.autograd.gradcheck(lambda d: kernels.toeplitz(d, rows, cols), (diagonals,))


def test_loss_and_gelu_dispatch_when_compiled_for_training():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 11, dtype=torch.bfloat16), torch.tensor([1, 2, -100, 4, 5, 10])
    loss, (grad,), ops = _compiled(lambda x: kernels.cross_entropy_sum(x, labels), logits)
    assert not any("nll_loss" in op for op in ops["forward"] + ops["backward"])
    expected, (expected_grad,) = _grads(lambda x: F.cross_entropy(x.float(), labels, reduction="sum"), logits)
    torch.testing.assert_close(loss, expected)
    # both are the float32 gradient rounded once to bf16: at most one bf16 step apart (measured: identical)
    torch.testing.assert_close(grad.float(), expected_grad.float(), atol=0, rtol=2.0 ** -7)

    x = torch.randn(64, dtype=torch.bfloat16)
    out, (grad,), ops = _compiled(kernels.gelu_tanh, x)
    assert any("sigmoid" in op for op in ops["forward"]) and not any("tanh" in op for op in ops["forward"])
    expected, (expected_grad,) = _grads(lambda x: F.gelu(x, approximate="tanh"), x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, expected_grad)
