"""The fused, chunked head and loss (`ptlab.models.head_loss`) computes what the unfused path computes: the
summed token loss and every gradient, for each family's head, eager and compiled, fp32 and bf16."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ptlab.config import ModelConfig
from ptlab.models import build_model
from ptlab.models.head_loss import OutputHead, head_loss_sum
from ptlab.train.batches import autocast
from ptlab.train.loop import summed_loss

V = 97  # a vocabulary no chunk size divides evenly into anything
BF16_ROUNDING = 2.0 ** -8  # as tests/test_kernels.py: one bf16 rounding


def unfused(hidden, labels, head):
    logits = head.logits(hidden)
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(wide, labels, ignore_index=-100, reduction="sum")


def gap(got, want) -> float:
    """Relative distance over the whole tensor (entries near zero make elementwise tolerances meaningless)."""
    return float((got.float() - want.float()).norm() / want.float().norm())


def grads(loss_fn, *inputs):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    loss = loss_fn(*inputs)
    loss.backward()
    return loss.detach(), [x.grad for x in inputs]


@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(0, 23), chunk=st.integers(1, 9), ignored=st.floats(0, 1), scale=st.sampled_from([1.0, 0.3]),
       biased=st.booleans(), seed=st.integers(0, 2**16))
def test_value_and_gradients_equal_the_unfused_loss_in_float64(tokens, chunk, ignored, scale, biased, seed):
    """Any token count against any chunk size (dividing it or not, larger than it, zero tokens), any share of
    ignored labels (all of them included), T5's scaled head and BART's biased one."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, 6, dtype=torch.float64, generator=g)
    weight = torch.randn(V, 6, dtype=torch.float64, generator=g)
    bias = torch.randn(1, V, dtype=torch.float64, generator=g)
    labels = torch.randint(0, V, (tokens,), generator=g)
    labels[torch.rand(tokens, generator=g) < ignored] = -100

    def ours(h, w, b):
        return head_loss_sum(h, labels, OutputHead(w, b if biased else None, scale), chunk)

    def reference(h, w, b):
        return unfused(h, labels, OutputHead(w, b if biased else None, scale))

    got, got_grads = grads(ours, hidden, weight, bias)
    want, want_grads = grads(reference, hidden, weight, bias)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g_ours, g_ref in zip(got_grads, want_grads):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)
    if (labels == -100).all():
        assert got == 0 and all(not g.any() for g in got_grads[:2])


def test_gradients_match_central_differences_and_scale_with_the_upstream_gradient():
    """Against finite differences of the loss alone (the forward without gradients), not against another
    implementation; the gradient reaching the loss (1.7 here) scales every input's gradient."""
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(11, 5, dtype=torch.float64, generator=g), torch.randn(13, 5, dtype=torch.float64,
                                                                                      generator=g)
    bias = torch.randn(13, dtype=torch.float64, generator=g)
    labels = torch.tensor([1, -100, 3, 12, 0, 5, -100, 7, 8, 9, 2])

    def loss(h, w, b):
        return head_loss_sum(h, labels, OutputHead(w, b, 0.5), 4)

    inputs = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
    (1.7 * loss(*inputs)).backward()
    step = 1e-6
    for which, x in enumerate((hidden, weight, bias)):
        numeric = torch.zeros_like(x)
        for i in range(x.numel()):
            plus, minus = [t.clone() for t in (hidden, weight, bias)], [t.clone() for t in (hidden, weight, bias)]
            plus[which].view(-1)[i] += step
            minus[which].view(-1)[i] -= step
            with torch.no_grad():
                numeric.view(-1)[i] = 1.7 * (loss(*plus) - loss(*minus)) / (2 * step)
        torch.testing.assert_close(inputs[which].grad, numeric, rtol=1e-6, atol=1e-7)


def test_a_chunk_far_larger_than_the_batch_holds_only_the_batchs_logits():
    """`train.loss_chunk_tokens` larger than any batch (10^12 here) sizes the chunk by the batch, eagerly."""
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(9, 4, dtype=torch.float64, generator=g), torch.randn(V, 4, dtype=torch.float64,
                                                                                    generator=g)
    labels = torch.randint(0, V, (9,), generator=g)
    got, got_grads = grads(lambda h, w: head_loss_sum(h, labels, OutputHead(w), 10**12), hidden, weight)
    want, want_grads = grads(lambda h, w: unfused(h, labels, OutputHead(w)), hidden, weight)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g_got, g_want in zip(got_grads, want_grads):
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)


def test_a_retained_graph_differentiated_again_fails_instead_of_scaling_twice():
    hidden, weight = torch.randn(6, 4, requires_grad=True), torch.randn(9, 4, requires_grad=True)
    loss = head_loss_sum(hidden, torch.tensor([1, 2, 3, 4, 5, 6]), OutputHead(weight), 4)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def model_and_batch(family: str, tie: bool | None = None):
    """A one-layer model of FAMILY at random, and a batch with padding and ignored labels (13 + 11 target
    tokens for the encoder-decoders, 2 x 17 for the decoders: no chunk below divides them)."""
    cfg = ModelConfig(family=family, vocab_size=V, d_model=32, d_ff=64, num_heads=4, num_layers=1,
                      tie_word_embeddings=tie, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    cfg.validate()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    if family == "bart":  # a zero final_logits_bias (HF's init) would hide a bias left out of the fused head
        model.final_logits_bias.normal_()
    g = torch.Generator().manual_seed(1)
    if cfg.is_encoder_decoder:
        labels = torch.randint(3, V, (2, 13), generator=g)
        labels[1, 11:] = -100
        mask = torch.ones(2, 9, dtype=torch.long)
        mask[0, 7:] = 0
        return model, {"input_ids": torch.randint(3, V, (2, 9), generator=g), "attention_mask": mask,
                       "decoder_input_ids": torch.randint(3, V, (2, 13), generator=g), "labels": labels}
    ids = torch.randint(3, V, (2, 17), generator=g)
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    labels[0, :4] = -100
    return model, {"input_ids": ids, "position_ids": torch.arange(17).expand(2, 17), "labels": labels}


def step_gradients(model, batch, chunk_tokens, precision="fp32"):
    model.zero_grad(set_to_none=True)
    with autocast(precision):
        loss = summed_loss(model, batch, chunk_tokens)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


HEADS = [("t5", False), ("t5", True), ("bart", None), ("gpt2", None), ("llama", None), ("llama", True)]


@pytest.mark.parametrize("family, tie", HEADS)
def test_a_models_loss_and_every_gradient_match_the_unfused_path_in_fp32(family, tie):
    """Through a real model (T5 v1.1's untied head and v1.0's tied, scaled one; BART's biased head; GPT-2's tied
    and Llama's untied head), chunks of 5 tokens: loss and the gradients of every parameter within 1e-5."""
    model, batch = model_and_batch(family, tie)
    want_loss, want = step_gradients(model, batch, 0)
    got_loss, got = step_gradients(model, batch, 5)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=0)
    assert got.keys() == want.keys() and len(got) > 5
    for name, grad in want.items():
        if not name.endswith("k.bias"):  # no gradient in exact arithmetic: both hold rounding noise
            assert gap(got[name], grad) < 1e-5, (name, gap(got[name], grad))


@pytest.mark.parametrize("family, tie", HEADS)
def test_a_models_loss_and_gradients_follow_the_unfused_path_in_bf16(family, tie):
    """Under bf16 autocast both paths round the head's products to bf16; the fused one sums the head weight's
    gradient over chunks in float32 instead of rounding it once. Loss within a quarter of one bf16 rounding,
    each gradient within two (as tests/test_kernels.py holds the kernels)."""
    model, batch = model_and_batch(family, tie)
    want_loss, want = step_gradients(model, batch, 0, "bf16")
    got_loss, got = step_gradients(model, batch, 5, "bf16")
    torch.testing.assert_close(got_loss, want_loss, rtol=BF16_ROUNDING / 4, atol=0)
    for name, grad in want.items():
        if name.endswith("k.bias"):  # no gradient in exact arithmetic: both hold rounding noise
            continue
        assert gap(got[name], grad) < 2 * BF16_ROUNDING, (name, gap(got[name], grad))


def test_zero_labelled_tokens_give_zero_loss_and_gradients():
    model, batch = model_and_batch("gpt2")
    batch["labels"] = torch.full_like(batch["labels"], -100)
    loss, got = step_gradients(model, batch, 4)
    assert loss == 0 and all(not g.any() for g in got.values())


def test_the_models_logits_are_the_head_applied_to_the_hidden_states():
    """Evaluation and generation still get logits from forward; the fused loss reads the same head."""
    for family, tie in HEADS:
        model, batch = model_and_batch(family, tie)
        args = ((batch["input_ids"], batch["decoder_input_ids"], batch["attention_mask"]) if "attention_mask" in batch
                else (batch["input_ids"],))
        hidden = model(*args, return_hidden=True)
        assert hidden.shape[-1] == 32
        torch.testing.assert_close(model.output_head().logits(hidden), model(*args), rtol=0, atol=0)


def _recording_backend(graphs):
    """AOT autograd with the graphs run as traced, recording the shape of every tensor each graph makes."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def part(name):
        def compiler(graph, _inputs):
            graphs[name] += [tuple(n.meta["val"].shape) for n in graph.graph.nodes if n.op == "call_function"
                             and isinstance(n.meta.get("val"), torch.Tensor)]
            return make_boxed_func(graph)
        return compiler
    return aot_autograd(fw_compiler=part("forward"), bw_compiler=part("backward"))


def compiled_step(model, batch, chunk_tokens, backend):
    """summed_loss compiled with the model into one graph, in bf16: its loss and the parameters' gradients."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda b: summed_loss(model, b, chunk_tokens), backend=backend)
    model.zero_grad(set_to_none=True)
    with autocast("bf16"):
        loss = compiled(batch)
    loss.backward()
    torch._dynamo.reset()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_bf16_close(got_loss, got, want_loss, want):
    torch.testing.assert_close(got_loss, want_loss, rtol=BF16_ROUNDING / 4, atol=0)
    assert got.keys() == want.keys()
    for name, grad in want.items():
        if not name.endswith("k.bias"):
            assert gap(got[name], grad) < 2 * BF16_ROUNDING, (name, gap(got[name], grad))


@pytest.mark.parametrize("family", ["gpt2", pytest.param("t5", marks=pytest.mark.slow)])  # t5 compiles for 20 s
def test_compiled_fused_matches_compiled_unfused_and_leaves_the_logits_out_of_the_graph(family):
    """Compiled with the model (AOT autograd, the graphs run as traced; the rest of the model then runs ptlab's
    compiled CPU kernels in both runs): the fused loss and gradients follow the unfused ones within the bf16
    tolerances above. The head and loss run eagerly after the graph, chunk after chunk: no tensor in the compiled
    graphs is as wide as the vocabulary (the unfused graphs hold the whole batch's logits)."""
    model, batch = model_and_batch(family)
    unfused_graphs = {"forward": [], "backward": []}
    want = compiled_step(model, batch, 0, _recording_backend(unfused_graphs))
    graphs = {"forward": [], "backward": []}
    got = compiled_step(model, batch, 5, _recording_backend(graphs))
    assert_bf16_close(*got, *want)
    labels = batch["labels"].numel()

    def logits_shaped(shapes):
        return [shape for shape in shapes if shape and shape[-1] == V and shape != (32, V)]  # not W.T

    assert (labels, V) in logits_shaped(unfused_graphs["forward"])  # the oracle sees logits where they are
    assert not logits_shaped(graphs["forward"] + graphs["backward"])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["t5", "bart", "gpt2", "llama"])
def test_inductor_compiled_fused_matches_compiled_unfused(family):
    model, batch = model_and_batch(family)
    assert_bf16_close(*compiled_step(model, batch, 5, "inductor"), *compiled_step(model, batch, 0, "inductor"))


@pytest.mark.parametrize("tokens", [7, 70])  # fewer tokens than a chunk (padded to 16 rows); a padded last chunk
def test_the_compiled_chunk_kernel_computes_what_the_eager_one_does(tokens):
    """Inside a compiled step each chunk runs through an inductor graph of its own, on padded chunks of one
    shape; its loss and gradients (biased, scaled head; ignored labels) are the eager kernel's."""
    g = torch.Generator().manual_seed(tokens)
    hidden, weight = torch.randn(tokens, 16, generator=g), torch.randn(V, 16, generator=g)
    bias = torch.randn(V, generator=g)
    labels = torch.randint(0, V, (tokens,), generator=g)
    labels[::3] = -100

    def loss(h, w, b):
        return head_loss_sum(h, labels, OutputHead(w, b, 0.5), 32)

    want, want_grads = grads(loss, hidden, weight, bias)
    torch._dynamo.reset()
    got, got_grads = grads(torch.compile(loss, backend="eager"), hidden, weight, bias)
    torch._dynamo.reset()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g_got, g_want in zip(got_grads, want_grads):
        torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(tokens=st.integers(0, 40), chunk=st.integers(1, 50), ignored=st.floats(0, 1), biased=st.booleans(),
       seed=st.integers(0, 2**16))
def test_label_log_probs_are_log_softmax_at_the_labels_chunk_by_chunk(tokens, chunk, ignored, biased, seed):
    from ptlab.models.head_loss import label_log_probs

    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, 16, generator=generator, dtype=torch.float64)
    head = OutputHead(torch.randn(V, 16, generator=generator, dtype=torch.float64),
                      torch.randn(V, generator=generator, dtype=torch.float64) if biased else None)
    labels = torch.randint(0, V, (tokens,), generator=generator)
    labels[torch.rand(tokens, generator=generator) < ignored] = -100
    want = F.log_softmax(head.logits(hidden), -1).gather(1, labels.clamp(min=0)[:, None])[:, 0] * (labels != -100)
    torch.testing.assert_close(label_log_probs(hidden, labels, head, chunk_tokens=chunk), want.float())


class _LargestVocabularyTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the most rows of any tensor made whose last dimension is the vocabulary (logits, their softmax)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.ndim and tensor.shape[-1] == self.vocab:
                self.rows = max(self.rows, tensor.numel() // self.vocab)
        return out


@pytest.mark.parametrize("family", ["t5", "gpt2"])
def test_evaluation_and_scoring_never_hold_a_batchs_whole_logits(family, monkeypatch):
    """evaluate_loss (the validation pass), label ranking and in-context scoring compute the head a chunk at a
    time, with the loss the whole logits give."""
    from ptlab.downstream.evaluate import _label_log_likelihoods
    from ptlab.downstream.incontext import answer_log_likelihoods
    from ptlab.models import head_loss
    from ptlab.models.kernels import cross_entropy_sum
    from ptlab.train.batches import batch_logits
    from ptlab.train.loop import evaluate_loss

    cfg = ModelConfig(family=family, vocab_size=V, d_model=16, d_ff=32, num_heads=2, num_layers=1, pad_token_id=0,
                      eos_token_id=1, bos_token_id=2, decoder_start_token_id=0)
    cfg.validate()
    model = build_model(cfg).eval()
    monkeypatch.setattr(head_loss, "SCORING_CHUNK_LOGITS", 16 * V)  # 16 tokens a chunk
    ids = torch.randint(3, V, (4, 25), generator=torch.Generator().manual_seed(0))
    if family == "t5":
        batch = {"input_ids": ids, "decoder_input_ids": ids, "labels": ids}
    else:
        batch = {"input_ids": ids, "position_ids": torch.arange(25).expand(4, 25), "labels": ids}
    with torch.no_grad():
        logits = batch_logits(model, batch)
    want = float(cross_entropy_sum(logits.reshape(-1, V), ids.reshape(-1))) / ids.numel()
    with _LargestVocabularyTensor(V) as watch:
        got = evaluate_loss(model, [batch], "fp32")
    assert got == pytest.approx(want, rel=1e-5)
    assert 0 < watch.rows <= 16 < ids.numel()

    from ptlab.objectives.base import Example

    rows = [Example(row[:10].numpy(), row[10:14].numpy()) for row in ids]
    with _LargestVocabularyTensor(V) as watch:
        scores = answer_log_likelihoods(model, rows, pad=0)
        ranked = _label_log_likelihoods(model, rows[:2], [rows[2].targets, rows[3].targets], 0, "fp32", "cpu")
    assert 0 < watch.rows <= 16 and scores.shape == (4,) and ranked.shape == (2, 2)
    assert np.isfinite(scores).all() and (scores < 0).all()
