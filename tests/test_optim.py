import copy
import math

import numpy as np
import pytest
import torch

from ptlab.config import TrainConfig
from ptlab.train.optim import AdamWScale, lr_factor


def test_adamw_scale_is_adamw_times_parameter_rms():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(8, 16) * 0.3)
    b = torch.nn.Parameter(a.detach().clone())
    reference = torch.optim.AdamW([a], lr=1e-2, betas=(0.9, 0.98), weight_decay=0.0)
    scaled = AdamWScale([b], lr=1e-2, betas=(0.9, 0.98))
    for _ in range(3):
        grad = torch.randn(8, 16)
        rms = b.detach().pow(2).mean().sqrt().item()
        before_a, before_b = a.detach().clone(), b.detach().clone()
        a.grad, b.grad = grad.clone(), grad.clone()
        reference.step()
        scaled.step()
        torch.testing.assert_close(b.detach() - before_b, (a.detach() - before_a) * rms, rtol=1e-4, atol=1e-7)
        a.data.copy_(b.data)  # keep both at the same point so the next step compares like with like


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear", "inverse_sqrt"])
def test_schedules_warm_up_linearly_then_decay(schedule):
    cfg = TrainConfig(max_steps=100, warmup_steps=10, schedule=schedule, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(x <= y + 1e-12 for x, y in zip(factors[:10], factors[1:10]))
    tail = factors[10:]
    assert all(x >= y - 1e-12 for x, y in zip(tail, tail[1:]))
    if schedule in ("cosine", "linear"):
        assert factors[-1] == pytest.approx(0.1, abs=0.02)
    if schedule == "inverse_sqrt":
        assert factors[39] == pytest.approx(math.sqrt(10 / 40))


def test_wsd_holds_the_peak_then_decays_over_the_last_share():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, schedule="wsd", decay_ratio=0.2, min_lr_ratio=0.0)
    factors = [lr_factor(s, cfg) for s in range(100)]
    assert factors[9] == pytest.approx(1.0) and all(f == 1.0 for f in factors[10:80])
    assert factors[90] == pytest.approx(0.5) and factors[99] == pytest.approx(0.05)


def test_adamw_scale_decays_like_adamw():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 4))
    b = torch.nn.Parameter(a.detach().clone())
    reference = torch.optim.AdamW([a], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.98))
    scaled = AdamWScale([b], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.98))
    a.grad, b.grad = torch.zeros(4, 4), torch.zeros(4, 4)  # a zero gradient leaves only the decay
    reference.step()
    scaled.step()
    torch.testing.assert_close(a.detach(), b.detach())


@pytest.mark.parametrize("name", ["adamw", "adamw_scale", "adafactor", "muon", "muon_scale"])
def test_every_optimizer_reduces_a_loss(name):
    from ptlab.train.optim import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = build_optimizer(model, TrainConfig(optimizer=name, lr=1e-2))
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    losses = []
    for _ in range(50):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def _muon_model(family: str = "gpt2", **model):
    from ptlab.config import ModelConfig
    from ptlab.models import build_model

    cfg = ModelConfig(family=family, vocab_size=64, d_model=16, d_ff=32, num_heads=2, num_layers=2,
                      pad_token_id=0, eos_token_id=1, bos_token_id=2, decoder_start_token_id=0, **model)
    cfg.validate()
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.mark.parametrize("family", ["t5", "bart", "gpt2", "llama"])
def test_muon_takes_the_hidden_matrices_and_adam_the_rest(family):
    from ptlab.train.optim import MuonWithAdam, build_optimizer

    model = _muon_model(family, qk_norm=True)
    optimizer = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02))
    assert isinstance(optimizer, MuonWithAdam)
    muon, adam = optimizer.parts
    assert isinstance(muon, torch.optim.Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    matrices = {names[id(p)] for group in muon.param_groups for p in group["params"]}
    rest = {names[id(p)] for group in adam.param_groups for p in group["params"]}
    assert not matrices & rest and matrices | rest == set(names.values())
    assert all(model.get_parameter(n).ndim == 2 for n in matrices)
    # every attention and feed-forward projection, and nothing at the vocabulary or position level
    assert all(n.split(".")[-2] in ("q", "k", "v", "o", "wi_0", "wi_1", "wi", "wo", "gate", "up", "down", "fc_in",
                                    "fc_out") for n in matrices)
    assert {n for n in rest if model.get_parameter(n).ndim == 2} <= {
        "embed.weight", "lm_head.weight", "positions.weight", "encoder_positions.weight",
        "decoder_positions.weight", "encoder_position_bias.embedding.weight",
        "decoder_position_bias.embedding.weight"}
    assert any(n.endswith("q_norm.weight") for n in rest)


@pytest.mark.parametrize("family", ["t5", "bart", "gpt2", "llama"])
def test_muon_scales_the_step_of_queries_that_hold_the_attention_scale(family):
    """T5 scores attention unscaled and folds 1/sqrt(d_kv) into its queries' init: Muon's step on those query
    matrices carries the same factor, so queries and keys keep their balance. Scaled attention (every other
    family, and T5 with QK-norm, which scales its scores) steps at Muon's one rate."""
    from ptlab.train.optim import build_optimizer

    for qk_norm in (False, True):
        model = _muon_model(family, qk_norm=qk_norm)
        optimizer = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02))
        names = {id(p): n for n, p in model.named_parameters()}
        ratios = {names[id(p)]: group["lr_ratio"] for group in optimizer.parts[0].param_groups
                  for p in group["params"]}
        d_kv = model.config.d_kv or model.config.d_model // model.config.num_heads
        folded = family == "t5" and not qk_norm
        assert {n: r for n, r in ratios.items() if r != 20.0} == (
            {n: pytest.approx(20.0 / d_kv ** 0.5) for n in ratios if n.endswith(".q.weight")} if folded else {})
        if folded:
            assert any(n.endswith(".q.weight") for n in ratios)


@pytest.mark.parametrize("family", ["t5", "bart", "gpt2", "llama"])
@pytest.mark.parametrize("optimizer", ["adamw", "adamw_scale", "muon"])
def test_embedding_lr_gives_every_embedding_table_its_own_rate(family, optimizer):
    """Tokens, learned positions and T5's relative-position bias tables step at `train.embedding_lr`; the bias
    tables, as before, without weight decay."""
    from ptlab.errors import PtlabError
    from ptlab.train.optim import build_optimizer
    from ptlab.train.step import set_learning_rate

    model = _muon_model(family, tie_word_embeddings=False)
    names = {id(p): n for n, p in model.named_parameters()}
    plain = build_optimizer(model, TrainConfig(optimizer=optimizer, lr=1e-3))
    assert all("lr_ratio" not in g for g in plain.param_groups[-2:])
    optim = build_optimizer(model, TrainConfig(optimizer=optimizer, lr=1e-3, embedding_lr=0.05, weight_decay=0.1))
    set_learning_rate(optim, 1e-3 * 0.5)  # a scheduled step at half the peak moves the embeddings' rate alike
    rates = {names[id(p)]: g["lr"] for g in optim.param_groups for p in g["params"]}
    decays = {names[id(p)]: g["weight_decay"] for g in optim.param_groups for p in g["params"]}
    assert set(rates) == set(names.values())
    fast = {n for n, lr in rates.items() if lr == pytest.approx(0.025)}
    tables = ("embed.weight", "positions.weight", "encoder_positions.weight", "decoder_positions.weight",
              "encoder_position_bias.embedding.weight", "decoder_position_bias.embedding.weight")
    assert fast == {n for n in names.values() if n in tables}
    assert "embed.weight" in fast and "lm_head.weight" not in fast
    assert ("encoder_position_bias.embedding.weight" in fast) == (family == "t5")
    assert all(decays[n] == 0.0 for n in fast if "position_bias" in n) and decays["embed.weight"] == 0.1
    with pytest.raises(PtlabError, match="train.embedding_lr"):
        TrainConfig(embedding_lr=0).validate()


@pytest.mark.parametrize("ns_steps", [5, 3])  # torch's default, and train.muon_ns_steps passed through
def test_muon_with_adam_steps_exactly_as_torchs_muon_and_adamw_side_by_side(ns_steps):
    from ptlab.train.optim import build_optimizer, hidden_matrices

    model, twin = _muon_model(), _muon_model()
    # bf16, where Newton-Schulz is torch's own (an fp32 run's runs in fp32: `_Muon`), on any CPU
    cfg = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1, beta2=0.95, muon_ns_steps=ns_steps,
                      precision="bf16")
    ours = build_optimizer(model, cfg)
    matrices = set(hidden_matrices(twin))
    hidden = [p for n, p in twin.named_parameters() if n in matrices]
    decay = [p for n, p in twin.named_parameters() if n not in matrices and p.ndim >= 2]
    other = [p for n, p in twin.named_parameters() if n not in matrices and p.ndim < 2]
    reference = [torch.optim.Muon(hidden, lr=0.02, weight_decay=0.1, momentum=0.95, adjust_lr_fn="original",
                                  ns_steps=ns_steps),
                 torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                   lr=1e-3, betas=(0.9, 0.95), eps=1e-8, fused=True)]
    ids = torch.randint(3, 64, (4, 9), generator=torch.Generator().manual_seed(0))
    for step in range(3):
        for m in (model, twin):
            logits = m(ids[:, :-1])
            torch.nn.functional.cross_entropy(logits.reshape(-1, 64), ids[:, 1:].reshape(-1)).backward()
        factor = 0.5 + step / 4  # the schedule moves every group's lr together, Muon's at its own ratio
        for group in ours.param_groups:
            group["lr"] = 1e-3 * factor * group.get("lr_ratio", 1.0)
        for optimizer, lr in zip(reference, (0.02, 1e-3)):
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
        ours.step()
        ours.zero_grad()
        for optimizer in reference:
            optimizer.step()
            optimizer.zero_grad()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_muon_state_round_trips_through_a_state_dict():
    """A fresh optimizer loaded with the state dict continues exactly as the original (the inner optimizers see
    the loaded state, not the state they were built with)."""
    from ptlab.train.optim import build_optimizer

    cfg = TrainConfig(optimizer="muon_scale", lr=1e-2, muon_lr=0.02)
    model = _muon_model("t5")
    optimizer = build_optimizer(model, cfg)
    ids = torch.randint(3, 64, (4, 8), generator=torch.Generator().manual_seed(1))

    def step(m, opt):
        m(ids, ids).float().logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()

    step(model, optimizer)
    twin = copy.deepcopy(model)
    resumed = build_optimizer(twin, cfg)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert all(p in resumed.parts[0].state for g in resumed.parts[0].param_groups for p in g["params"])
    for _ in range(2):
        step(model, optimizer)
        step(twin, resumed)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_muon_finds_the_same_matrices_through_a_wrapper():
    """DDP and torch.compile prefix every name (module., _orig_mod.): the grouping must not change."""
    from ptlab.train.optim import build_optimizer

    model = _muon_model("llama")
    wrapper = torch.nn.Module()
    wrapper.module = model
    for wrapped in (wrapper, torch.compile(model)):
        plain = build_optimizer(model, TrainConfig(optimizer="muon")).parts[0]
        optimizer = build_optimizer(wrapped, TrainConfig(optimizer="muon")).parts[0]
        assert [len(g["params"]) for g in optimizer.param_groups] == [len(g["params"]) for g in plain.param_groups]
        assert len(plain.param_groups[0]["params"]) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 blocks


def test_muon_in_float32_is_torchs_muon_with_a_float32_newton_schulz():
    """The float32 update equals torch's up to Newton-Schulz's bfloat16 rounding, and is closer to the exact
    orthogonalisation (U V^T from the SVD, which the quintic iteration approximates to within its ~0.3 spread)."""
    from ptlab.train.optim import build_optimizer

    grads = torch.randn(24, 16, generator=torch.Generator().manual_seed(0))
    updates = {}
    for precision in ("bf16", "fp32"):
        weight = torch.nn.Linear(16, 24, bias=False)
        torch.nn.init.zeros_(weight.weight)
        optimizer = build_optimizer(weight, TrainConfig(optimizer="muon", muon_lr=1.0, weight_decay=0.0,
                                                        muon_momentum=0.0, precision=precision))
        weight.weight.grad = grads.clone()
        optimizer.step()
        updates[precision] = -weight.weight.detach() / math.sqrt(24 / 16)
    torch.testing.assert_close(updates["fp32"], updates["bf16"], atol=0.05, rtol=0)
    assert not torch.equal(updates["fp32"], updates["bf16"])
    u, _, v = torch.linalg.svd(grads, full_matrices=False)
    singular = torch.linalg.svdvals(updates["fp32"].double())
    assert singular.min() > 0.5 and singular.max() < 1.5
    exact = u @ v
    assert (updates["fp32"] - exact).norm() < (updates["bf16"] - exact).norm() + 1e-3


def test_the_spike_guard_skips_a_jump_and_absorbs_a_lasting_shift():
    from ptlab.train.step import SpikeGuard

    guard = SpikeGuard(sigmas=3.0, window=8, device=torch.device("cpu"))
    noise = np.random.default_rng(0).normal(0, 0.01, 200)
    check = lambda value: bool(guard.check(torch.tensor(value, dtype=torch.float64)))  # noqa: E731
    assert not any(check(5.0 + n) for n in noise[:8])  # no verdict before a window of history
    assert check(9.0)  # four hundred standard deviations up
    assert not check(float("nan"))  # non-finite: the trainer's own skip; not recorded
    assert not check(5.0)
    # a lasting shift: skipped at first, then the history (spikes enter it at the threshold) catches up
    shifted = [check(6.0 + n) for n in noise[8:80]]
    assert shifted[0] and not any(shifted[-20:])
    state = guard.state_dict()
    twin = SpikeGuard(sigmas=3.0, window=8, device=torch.device("cpu"))
    twin.load_state_dict(state)
    assert [check(7.0), check(6.0)] == [bool(twin.check(torch.tensor(v, dtype=torch.float64))) for v in (7.0, 6.0)]


def test_the_batch_size_warmup_ramps_rows_and_offsets_the_stream():
    from ptlab.train.loop import batch_rows, examples_before

    cfg = TrainConfig(batch_size=16, batch_warmup_steps=4, batch_warmup_start=0.25)
    assert [batch_rows(s, cfg) for s in range(6)] == [4, 7, 10, 13, 16, 16]
    assert [batch_rows(s, cfg, world_size=2) for s in range(6)] == [4, 6, 10, 12, 16, 16]
    assert [examples_before(s, cfg) for s in range(7)] == [0, 4, 11, 21, 34, 50, 66]
    plain = TrainConfig(batch_size=16)
    assert [examples_before(s, plain) for s in range(3)] == [0, 16, 32]
