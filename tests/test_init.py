"""Continued pre-training (`init:`): the first step's loss is the init model's loss on batch 0, from a ptlab
checkpoint and from a Hugging Face directory; config mistakes are one-line errors; and the recipe "import a
Hugging Face model, continue pre-training on my text, fine-tune, export back"."""

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from ptlab.config import Config, FinetuneConfig, ModelConfig, TaskConfig, load_config
from ptlab.data import ensure_shards
from ptlab.data.pipeline import IGNORE_INDEX, pretrain_batches, resolve_objective
from ptlab.data.tokenizer import load_tokenizer
from ptlab.downstream.finetune import finetune
from ptlab.errors import PtlabError
from ptlab.models import build_model
from ptlab.train.checkpoint import load_model, load_trainer_state, write_checkpoint
from ptlab.train.interop import export_hf
from ptlab.train.loop import fill_model_ids, loss_sum, model_inputs, pretrain, to_tensors
from ptlab.train.runlog import read_metrics

transformers = pytest.importorskip("transformers")

T5 = {"family": "t5", "d_model": 32, "d_ff": 64, "num_heads": 2, "num_layers": 1}


def run_config(tmp_path: Path, small_corpus, objective="span_corruption", **top) -> dict:
    return {"run_dir": str(tmp_path / "run"), "seed": 5,
            "objective": {"name": objective, "inputs_length": 32},
            "data": {"train_files": [str(small_corpus["train"])], "validation_files": [str(small_corpus["validation"])],
                     "vocab_size": 2000, "shards_dir": str(tmp_path / "shards")},
            "train": {"max_steps": 1, "batch_size": 4, "lr": 3e-3, "warmup_steps": 0, "log_every": 1,
                      "eval_every": 0, "eval_batches": 1, "precision": "fp32", "threads": 1, "tensorboard": False,
                      "peak_tflops": 1.0, "compile": False},
            **top}


def load(data: dict, *overrides: str) -> Config:
    path = Path(data["run_dir"]).parent / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return load_config(path, list(overrides))


def first_loss(run_dir: Path) -> float:
    return next(r["loss"] for r in read_metrics(run_dir) if r.get("step") == 1 and "loss" in r)


def batch_zero(run_dir: Path) -> dict:
    """Batch 0 as the run's saved config and tokenizer make it, built here from the shards."""
    cfg = load_config(run_dir / "config.yaml")
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    train, _ = ensure_shards(cfg.data, tokenizer, show_progress=False)
    objective = resolve_objective(cfg.objective, quiet=True)
    return pretrain_batches(cfg, objective, train, tokenizer.specials).batch(0, cfg.train.batch_size)


@pytest.fixture(scope="module")
def ptlab_checkpoint(tmp_path_factory, unigram_tokenizer) -> Path:
    """A randomly initialised tiny T5 saved as a ptlab checkpoint (as a finished run would leave it)."""
    cfg = Config(model=ModelConfig(**T5))
    cfg.model.validate()
    fill_model_ids(cfg, unigram_tokenizer.vocab_size, unigram_tokenizer.specials)
    torch.manual_seed(1234)
    target = tmp_path_factory.mktemp("init") / "checkpoint"
    return write_checkpoint(target, build_model(cfg.model), cfg, unigram_tokenizer)


def test_init_from_a_ptlab_checkpoint_starts_from_its_weights(tmp_path, small_corpus, ptlab_checkpoint,
                                                              tokenizer_dir):
    result = pretrain(load(run_config(tmp_path / "init", small_corpus, init=str(ptlab_checkpoint))),
                      show_progress=False)
    run_dir = result.run_dir
    batch = to_tensors(model_inputs(batch_zero(run_dir)))
    with torch.no_grad():
        total, count = loss_sum(load_model(ptlab_checkpoint).train(), batch)
    assert first_loss(run_dir) == pytest.approx(float(total) / count, abs=1e-5)

    sha = hashlib.sha256((ptlab_checkpoint / "model.safetensors").read_bytes()).hexdigest()
    start = next(r for r in read_metrics(run_dir) if r.get("event") == "start")
    assert start["init"]["path"] == str(ptlab_checkpoint) and start["init"]["sha256"] == sha
    assert load_trainer_state(result.checkpoint)["data"]["init"]["sha256"] == sha
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()  # the init's tokenizer, copied into the run
    assert load_config(run_dir / "config.yaml").model.d_model == 32  # the saved config loads as it is

    scratch = run_config(tmp_path / "scratch", small_corpus, model=T5)  # same architecture, tokenizer and data
    scratch["data"]["tokenizer"] = str(tokenizer_dir)
    from_scratch = pretrain(load(scratch), show_progress=False)
    assert abs(first_loss(from_scratch.run_dir) - first_loss(run_dir)) > 1e-3


def hf_gpt2(directory: Path, tokenizer) -> Path:
    torch.manual_seed(7)
    config = transformers.GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                     bos_token_id=tokenizer.specials.eos, eos_token_id=tokenizer.specials.eos,
                                     pad_token_id=tokenizer.specials.pad, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def hf_loss(hf_dir: Path, batch: dict) -> float:
    """The Hugging Face model's own mean token loss on a ptlab decoder batch."""
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(batch["input_ids"]),
                       position_ids=torch.from_numpy(batch["position_ids"])).logits
    labels = torch.from_numpy(batch["labels"])
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX))


def test_init_from_a_hugging_face_directory_starts_from_its_weights(tmp_path, small_corpus, unigram_tokenizer):
    hf_dir = hf_gpt2(tmp_path / "hf", unigram_tokenizer)
    config = run_config(tmp_path / "continued", small_corpus, objective="causal_lm", init=str(hf_dir))
    result = pretrain(load(config), show_progress=False)
    batch = batch_zero(result.run_dir)
    assert (batch["labels"] != IGNORE_INDEX).all()  # plain causal rows: HF's own causal attention applies
    assert first_loss(result.run_dir) == pytest.approx(hf_loss(hf_dir, batch), abs=1e-4)
    imported = list((result.run_dir / "init").glob("hf-*"))
    assert len(imported) == 1 and (imported[0] / "model.safetensors").is_file()
    start = next(r for r in read_metrics(result.run_dir) if r.get("event") == "start")
    assert start["init"]["path"] == str(hf_dir) and start["init"]["checkpoint"] == str(imported[0])

    shutil.rmtree(hf_dir)  # init seeds step 0 only: a resumed run needs nothing but its own checkpoint
    again = pretrain(load(config, "train.max_steps=2"), show_progress=False)
    assert again.resumed_from == 1
    with pytest.raises(PtlabError, match="config key 'init': .* does not exist"):  # a fresh start does need it
        pretrain(load(config, "train.max_steps=2"), show_progress=False, resume="never")


def test_init_config_mistakes_are_one_line_errors(tmp_path, small_corpus, ptlab_checkpoint, tokenizer_dir,
                                                  bpe_tokenizer):
    agreeing = run_config(tmp_path / "agree", small_corpus, init=str(ptlab_checkpoint), model=T5)
    assert pretrain(load(agreeing), show_progress=False).steps == 1  # keys that agree with the init are fine
    # so is a data.tokenizer holding the init's own tokenizer (the checkpoint was saved with the same one)
    same = run_config(tmp_path / "same-tokenizer", small_corpus, init=str(ptlab_checkpoint))
    assert pretrain(load(same, f"data.tokenizer={tokenizer_dir}"), show_progress=False).steps == 1
    other_tokenizer = tmp_path / "bpe"
    bpe_tokenizer.save(other_tokenizer)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    mistakes = [
        (run_config(tmp_path, small_corpus, init=str(ptlab_checkpoint), model={**T5, "d_model": 64}), [],
         r"config key 'model.d_model': 64 conflicts with the init model's 32"),
        (run_config(tmp_path, small_corpus, init=str(ptlab_checkpoint), model={**T5, "family": "gpt2"}), [],
         r"config key 'model.family': 'gpt2' conflicts with the init model's 't5'"),
        (run_config(tmp_path, small_corpus, init=str(ptlab_checkpoint)), [f"data.tokenizer={other_tokenizer}"],
         rf"config key 'data.tokenizer': {other_tokenizer} \(fingerprint \w+\) is not the tokenizer of init "
         rf"{ptlab_checkpoint} \(fingerprint \w+\)"),
        (run_config(tmp_path, small_corpus, init=str(ptlab_checkpoint)), [f"data.tokenizer={tmp_path / 'none'}"],
         "config key 'data.tokenizer': .*none holds no tokenizer.json, and the tokenizer comes from init"),
        (run_config(tmp_path, small_corpus, init=str(tmp_path / "missing")), [],
         "config key 'init': .* does not exist"),
        (run_config(tmp_path, small_corpus, init=str(tmp_path)), [], "no checkpoint at"),
        (run_config(tmp_path, small_corpus, init=str(tmp_path / "hf")), [], "has no tokenizer.json"),
    ]
    for config, overrides, message in mistakes:
        with pytest.raises(PtlabError, match=message) as err:
            pretrain(load(config, *overrides), show_progress=False)
        assert "\n" not in str(err.value)


def test_import_continue_finetune_export_recipe(tmp_path, small_corpus, unigram_tokenizer):
    """Import a Hugging Face model, continue pre-training on my text, fine-tune, export back."""
    hf_dir = hf_gpt2(tmp_path / "hf", unigram_tokenizer)
    continued = pretrain(load(run_config(tmp_path / "continued", small_corpus, objective="causal_lm",
                                         init=str(hf_dir)), "train.max_steps=3"), show_progress=False)
    tuned = finetune(FinetuneConfig(run_dir=str(tmp_path / "finetuned"), init=str(continued.run_dir),
                                    task=TaskConfig(name="rt_polarity", max_train_examples=16, max_eval_examples=8,
                                                    max_input_length=32),
                                    train=dataclasses.replace(FinetuneConfig().train, batch_size=8, eval_every=2,
                                                       precision="fp32", threads=1),
                                    max_steps=2), show_progress=False)
    exported, notes = export_hf(tuned.checkpoint, tmp_path / "exported")
    assert notes == []
    ours = load_model(tuned.checkpoint)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    ids = torch.tensor([unigram_tokenizer.encode("sst2 sentence: a fine film")])
    with torch.no_grad():
        assert (ours(ids) - theirs(input_ids=ids).logits).abs().max() <= 1e-4
    start = load_model(continued.checkpoint)  # continued pre-training moved the imported weights
    imported = load_model(next((continued.run_dir / "init").glob("hf-*")))
    assert any((a - b).abs().max() > 0 for a, b in zip(start.state_dict().values(), imported.state_dict().values()))
