"""The 2026 recipe's options do what they say: QK-norm makes attention blind to the scale of queries and keys,
zero-initialised output projections start every block as the identity, the spike guard skips (and records) steps
without stopping the run, the batch-size warmup feeds the ramp's examples, `loss_chunk_tokens: auto` fuses
the head and loss only for large vocabularies, and `precision: auto` takes bf16 only where the CPU computes it."""

from pathlib import Path

import pytest
import torch

from ptlab.config import ModelConfig, TrainConfig, load_config
from ptlab.errors import PtlabError
from ptlab.models import build_model
from ptlab.train.loop import examples_before, pretrain
from ptlab.train.runlog import read_metrics
from test_trainer import write_config


def model_config(family: str, **overrides) -> ModelConfig:
    cfg = ModelConfig(family=family, vocab_size=64, d_model=32, d_ff=64, num_heads=4, num_layers=2,
                      pad_token_id=0, eos_token_id=1, bos_token_id=2, decoder_start_token_id=0, **overrides)
    cfg.validate()
    return cfg


def logits(model, family: str, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, ids) if family in ("t5", "bart") else model(ids)


@pytest.mark.parametrize("family", ["t5", "bart", "gpt2", "llama"])
def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys(family):
    torch.manual_seed(0)
    model = build_model(model_config(family, qk_norm=True)).eval()
    ids = torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    before = logits(model, family, ids)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "q_norm"):
                assert module.q_norm is not None
                for layer in (module.q, module.k):
                    for param in layer.parameters():
                        param.mul_(50.0)
    torch.testing.assert_close(logits(model, family, ids), before, rtol=1e-4, atol=1e-4)
    plain = build_model(model_config(family)).eval()
    assert not any("q_norm" in name for name, _ in plain.named_parameters())


@pytest.mark.parametrize("family", ["t5", "bart", "gpt2", "llama"])
def test_zero_initialised_output_projections_start_every_block_as_the_identity(family):
    torch.manual_seed(0)
    model = build_model(model_config(family, zero_init_output=True)).eval()
    zeroed = [name for name, p in model.named_parameters() if p.ndim == 2 and not p.any()]
    ends = {"o.weight", "wo.weight", "down.weight", "fc_out.weight"}
    assert zeroed and all(".".join(name.split(".")[-2:]) in ends for name in zeroed)
    blocks = [m for name in ("blocks", "encoder_blocks", "decoder_blocks") for m in getattr(model, name, [])]
    x = torch.randn(2, 5, 32)
    for block in blocks[:1] if family in ("gpt2", "llama") else []:  # a decoder block: x in, x out
        torch.testing.assert_close(block(x, None, None, None), x)
    if family == "t5":
        torch.testing.assert_close(model.encoder_blocks[0](x, None), x)


def test_the_spike_guard_skips_and_records_steps_without_stopping_the_run(tmp_path, small_corpus, tokenizer_dir):
    """With a threshold of a millionth of a standard deviation, any step whose loss is above the recent mean is a
    spike: skipped, recorded with reason "spike", and never counted toward train.max_bad_steps."""
    config = write_config(tmp_path, small_corpus, tokenizer_dir, max_steps=16, checkpoint_every=0,
                          spike_sigmas=1e-6, spike_window=2, max_bad_steps=1)
    result = pretrain(load_config(config), show_progress=False)
    records = read_metrics(tmp_path / "run")
    spikes = [r["step"] for r in records if r.get("event") == "skipped_step"]
    assert spikes and all(r["reason"] == "spike" for r in records if r.get("event") == "skipped_step")
    assert result.steps == 16 and result.skipped_steps == len(spikes)
    logged = [r["step"] for r in records if "loss" in r and "event" not in r]
    assert not set(spikes) & set(logged) and len(logged) + len(spikes) == 16


def test_the_batch_size_warmup_trains_on_the_ramps_examples(tmp_path, small_corpus, tokenizer_dir):
    config = write_config(tmp_path, small_corpus, tokenizer_dir, max_steps=6, checkpoint_every=3,
                          batch_warmup_steps=4, batch_warmup_start=0.25)
    cfg = load_config(config)
    pretrain(cfg, show_progress=False)
    from ptlab.train.checkpoint import list_checkpoints, load_trainer_state

    state = load_trainer_state(list_checkpoints(tmp_path / "run")[0])
    assert state["data"]["examples_seen"] == examples_before(3, cfg.train) == 2 + 3 + 5
    assert state["data"]["batch_warmup"] == [4, 0.25]


def test_loss_chunk_tokens_auto_fuses_by_vocabulary_and_precision():
    from ptlab.models.head_loss import training_chunk_tokens

    train = TrainConfig()
    assert train.loss_chunk_tokens == "auto" and train.precision == "auto"
    vocabularies = (1024, 8192, 32768, 50257, 65536, 131072)
    # 256 KiB of logits a token: from 64k ids in float32 and 128k in bf16 (below, the whole logits measured faster)
    assert [training_chunk_tokens("auto", v, "fp32") for v in vocabularies] == [0, 0, 0, 0, 256, 256]
    assert [training_chunk_tokens("auto", v, "bf16") for v in vocabularies] == [0, 0, 0, 0, 0, 256]
    assert training_chunk_tokens(TrainConfig(loss_chunk_tokens=64).loss_chunk_tokens, 131072, "bf16") == 64
    assert training_chunk_tokens(0, 131072, "fp32") == 0
    with pytest.raises(PtlabError, match="loss_chunk_tokens"):
        TrainConfig(loss_chunk_tokens="sometimes").validate()


def test_a_qk_norm_model_is_refused_by_the_hf_export_with_one_line():
    from ptlab.models.hf import hf_config_from_model

    with pytest.raises(PtlabError, match="model.qk_norm"):
        hf_config_from_model(model_config("llama", qk_norm=True))
    hf_config_from_model(model_config("llama", zero_init_output=True))  # an init choice: exports as any other


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_takes_bf16_only_where_the_device_computes_it_natively(monkeypatch, tmp_path, native):
    import ptlab.precision
    from ptlab.config import save_config
    from ptlab.train.batches import autocast

    monkeypatch.setattr(ptlab.precision, "native_bf16", lambda device_type="cpu": native)
    expected = "bf16" if native else "fp32"
    cfg = load_config(None, ["train.device=cpu"])  # the default is auto
    assert cfg.train.precision == expected
    save_config(cfg, tmp_path / "config.yaml")  # the saved config says which one ran, and loads as it ran
    assert load_config(tmp_path / "config.yaml").train.precision == expected
    for precision in ("bf16", "fp32"):  # a chosen precision is kept whatever the hardware
        assert load_config(None, [f"train.precision={precision}"]).train.precision == precision
    with autocast("auto"):  # a config built without validate() resolves auto where it computes
        assert (torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")) == native
    with pytest.raises(PtlabError, match="train.precision.*'auto', 'bf16' or 'fp32'"):
        load_config(None, ["train.precision=fp16"])


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="the kernel's CPU flags are the oracle (Linux)")
def test_native_bf16_follows_the_cpus_instruction_flags():
    from ptlab.precision import native_bf16

    flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split(":", 1)[1].split())
    assert native_bf16("cpu") == bool(flags & {"amx_bf16", "avx512_bf16"})
