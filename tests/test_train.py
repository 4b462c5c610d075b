import json

import numpy as np
import pytest
import torch

from ptlab.config import load_config
from ptlab.data.pipeline import PretrainBatches, resolve_objective
from ptlab.data.shards import build_shard, open_shard
from ptlab.lab.baselines import unigram_target_baseline
from ptlab.objectives import SpecialIds
from ptlab.train.checkpoint import load_checkpoint_tokenizer, load_model
from ptlab.train.loop import pretrain

TINY = ["model.d_model=64", "model.d_kv=16", "model.d_ff=128", "model.num_heads=4", "model.num_layers=2",
        "objective.inputs_length=64", "train.batch_size=8", "train.warmup_steps=5", "train.eval_every=20",
        "train.log_every=1", "train.eval_batches=2", "train.lr=3e-3", "train.threads=2"]


def tiny_config(tmp_path, corpus, tokenizer_dir, *extra):
    return load_config(None, TINY + [f"run_dir={tmp_path / 'run'}", f"data.train_files=[{corpus['train']}]",
                                     f"data.validation_files=[{corpus['validation']}]",
                                     f"data.tokenizer={tokenizer_dir}", "data.vocab_size=2000", *extra])



def test_shard_holds_documents_separated_by_eos(tmp_path, small_corpus, unigram_tokenizer, sample_docs):
    shard = build_shard([str(small_corpus["train"])], unigram_tokenizer, tmp_path / "shard", show_progress=False)
    assert shard.tokens.dtype == np.uint16
    reopened = open_shard(tmp_path / "shard")
    first = sample_docs[0]["text"]
    expected = unigram_tokenizer.encode(first) + [1]
    assert reopened.tokens[:len(expected)].tolist() == expected
    assert reopened.doc_starts[1] == len(expected)
    assert reopened.index["num_documents"] == len(reopened.doc_starts)


def test_batches_depend_only_on_seed_and_example_number(tmp_path, small_corpus, unigram_tokenizer):
    cfg = load_config(None, ["objective.inputs_length=64"])
    shard = build_shard([str(small_corpus["train"])], unigram_tokenizer, tmp_path / "s", show_progress=False)
    objective, specials = resolve_objective(cfg.objective), unigram_tokenizer.specials
    batches = PretrainBatches(shard, objective, 64, specials, seed=3)
    late = batches.batch(40, 4)
    fresh = PretrainBatches(shard, objective, 64, specials, seed=3)
    fresh.batch(0, 4)
    for key, value in fresh.batch(40, 4).items():
        np.testing.assert_array_equal(value, late[key])
    assert late["input_ids"].shape == (4, 64)
    other = PretrainBatches(shard, objective, 64, specials, seed=4).batch(40, 4)
    assert not np.array_equal(other["input_ids"], late["input_ids"])


def test_unigram_baseline_matches_direct_computation():
    specials = SpecialIds(pad=0, eos=1, unk=2, sentinels=(9, 8))
    train = np.array([3, 3, 3, 4, 1, 9, 5])
    labels = np.array([[9, 3, 4, 8, 5, 1, -100]])
    counts = {3: 4, 4: 2, 5: 2, 2: 1, 6: 1, 7: 1}  # add-one over ordinary ids 2..7
    total = sum(counts.values())
    expected = (-np.log(4 / total) - np.log(2 / total) - np.log(2 / total)) / 6
    assert unigram_target_baseline(train, labels, specials, 10) == pytest.approx(expected)


def test_small_run_learns_and_checkpoints(tmp_path, small_corpus, tokenizer_dir):
    cfg = tiny_config(tmp_path, small_corpus, tokenizer_dir, "train.max_steps=60")
    result = pretrain(cfg, show_progress=False)
    assert result.final_val_loss < result.initial_val_loss - 1.0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 60 and np.mean(losses[-10:]) < np.mean(losses[:10]) - 1.0
    ckpt = result.checkpoint
    for name in ("model.safetensors", "config.yaml", "tokenizer.json", "meta.json", "trainer_state.pt"):
        assert (ckpt / name).is_file()
    model = load_model(tmp_path / "run")
    tok = load_checkpoint_tokenizer(tmp_path / "run")
    assert tok.vocab_size == model.config.vocab_size
    x = torch.randint(3, 1000, (1, 10))
    assert model(x, x).shape == (1, 10, tok.vocab_size)
    torch.load(ckpt / "trainer_state.pt", weights_only=True)  # no arbitrary pickle


def test_runs_are_deterministic_and_accumulation_matches(tmp_path, small_corpus, tokenizer_dir):
    def losses(name, *extra):
        cfg = tiny_config(tmp_path / name, small_corpus, tokenizer_dir, "train.max_steps=4",
                          "train.precision=fp32", "train.eval_batches=1", *extra)
        pretrain(cfg, show_progress=False)
        lines = (tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if '"loss"' in line]

    a, b = losses("a"), losses("b")
    assert a == b
    accumulated = losses("c", "train.grad_accum=4")
    np.testing.assert_allclose(accumulated, a, rtol=1e-4)


@pytest.mark.parametrize("config", ["t5-tiny", "bart-tiny", "gpt2-tiny", "llama-tiny", "demo"])
def test_every_family_config_pretrains_and_generates(tmp_path, small_corpus, tokenizer_dir, config):
    from ptlab.models.generate import generate

    cfg = load_config(f"configs/{config}.yaml", [
        f"run_dir={tmp_path / 'run'}", f"data.train_files=[{small_corpus['train']}]",
        f"data.validation_files=[{small_corpus['validation']}]", f"data.tokenizer={tokenizer_dir}",
        "data.tokenizer_kind=unigram", "data.vocab_size=2000", "model.d_model=64", "model.d_ff=128",
        "model.num_layers=1", "objective.inputs_length=64", "train.batch_size=4", "train.max_steps=12",
        "train.warmup_steps=2", "train.eval_every=0", "train.eval_batches=1", "train.checkpoint_every=0",
        "train.lr=3e-3", "train.threads=2"])
    result = pretrain(cfg, show_progress=False)
    assert result.final_val_loss < result.initial_val_loss
    model = load_model(result.checkpoint)
    assert model.config.family == cfg.model.family and model.config.eos_token_id == 1
    prompt = torch.tensor([[5, 6, 7, 1]])
    new_tokens = generate(model, prompt, max_new_tokens=4, eos_token_id=-1)
    assert torch.equal(new_tokens, greedy_by_full_forward(model, prompt, 4))


def greedy_by_full_forward(model, prompt, steps):
    """The oracle: argmax of a full forward pass over everything so far, one token at a time, no cache."""
    model.eval()
    start = model.config.decoder_start_token_id
    sequence = torch.tensor([[start]]) if model.is_encoder_decoder else prompt
    with torch.no_grad():
        for _ in range(steps):
            logits = model(prompt, sequence) if model.is_encoder_decoder else model(sequence)
            sequence = torch.cat([sequence, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return sequence[:, -steps:]


def test_logged_tflops_and_mfu_are_the_counted_flops_over_the_time(tmp_path, small_corpus, tokenizer_dir):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = tiny_config(tmp_path, small_corpus, tokenizer_dir, "model.family=gpt2", "objective.name=causal_lm",
                      "train.max_steps=3", "train.peak_tflops=0.5", "train.compile=false")
    pretrain(cfg, show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "tflops" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    model = load_model(tmp_path / "run")
    window = cfg.objective.inputs_length
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model.train()(torch.randint(3, 1000, (cfg.train.batch_size, window))).sum().backward()
    for r in steps:
        assert r["tflops"] * 1e12 * r["seconds"] == pytest.approx(r["step"] * counter.get_total_flops(), rel=1e-3)
        assert r["mfu"] == pytest.approx(r["tflops"] / 0.5)


def test_a_checkpoint_from_an_earlier_ptlab_is_refused_in_one_line(tmp_path):
    from ptlab.errors import PtlabError
    from ptlab.train.checkpoint import load_trainer_state

    torch.save({"step": 5, "optimizer": {}, "scheduler": {}}, tmp_path / "trainer_state.pt")
    with pytest.raises(PtlabError, match="lacks rng, progress, data"):
        load_trainer_state(tmp_path)
