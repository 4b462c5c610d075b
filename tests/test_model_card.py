"""The model card `ptlab export-hf` writes (README.md): the architecture, the objective, the data, the steps and
tokens, the final validation loss and the config, each read back against the run it describes."""

import re

import yaml
from test_finetune import custom_config
from test_trainer import write_config

from ptlab.config import Config, FinetuneConfig, ModelConfig, load_config
from ptlab.models import build_model, count_parameters
from ptlab.train.checkpoint import load_model, write_checkpoint
from ptlab.train.interop import export_hf
from ptlab.train.runlog import read_metrics


def table(card: str) -> dict[str, str]:
    """The card's `| key | value |` rows."""
    return {m[1]: m[2] for m in re.finditer(r"^\| ([^|]+?) \| (.*) \|$", card, re.M) if m[1] != "---"}


def config_block(card: str) -> str:
    return card.split("```yaml\n", 1)[1].split("\n```", 1)[0] + "\n"


def test_a_pretrained_checkpoints_card_says_what_it_is_what_it_saw_and_how_to_make_it_again(
        tmp_path, small_corpus, tokenizer_dir):
    from ptlab.train.loop import pretrain

    config = write_config(tmp_path, small_corpus, tokenizer_dir, max_steps=6, eval_every=3, checkpoint_every=3)
    result = pretrain(load_config(config, ["objective.noise_density=0.2"]), show_progress=False)
    records = [r for r in read_metrics(result.run_dir) if "event" not in r]
    for checkpoint, step in ((result.checkpoint, 6), (result.run_dir / "checkpoints" / "step_0000003", 3)):
        out, _ = export_hf(checkpoint, tmp_path / f"hf-{step}")
        card = (out / "README.md").read_text()
        rows = table(card)
        assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text2text-generation\n")
        assert rows["family"] == "t5 (transformers `T5ForConditionalGeneration`)"
        assert rows["parameters"] == f"{count_parameters(load_model(checkpoint), trainable_only=False):,}"
        assert (rows["layers"], rows["d_model"], rows["d_ff"], rows["attention heads"]) == ("1 encoder, 1 decoder",
                                                                                          "32", "64", "2")
        assert rows["output head"] == "its own (untied from the input embedding)"
        assert rows["objective"].startswith("`span_corruption`, 32 input tokens per example; ")
        assert "noise_density=0.2" in rows["objective"]  # the run's own parameters, defaults resolved
        assert rows["data"] == f"`{small_corpus['train']}`"
        assert rows["validation data"] == f"`{small_corpus['validation']}`"
        assert rows["tokenizer"] == f"`{tokenizer_dir}` (unigram)"
        assert rows["steps"] == ("6" if step == 6 else "3 of 6 planned")
        tokens = [r["tokens"] for r in records if "tokens" in r and r["step"] <= step][-1]
        assert rows["tokens trained"] == f"{tokens:,.0f}" != "0"
        val_loss = [r["val_loss"] for r in records if r.get("val_loss") is not None and r["step"] == step][-1]
        assert rows["final validation loss"] == f"{val_loss:.4f} (step {step})"
        assert step != 6 or val_loss == result.final_val_loss
        val_bpb = [r["val_bpb"] for r in records if r.get("val_loss") is not None and r["step"] == step][-1]
        assert rows["final validation bits per byte"] == f"{val_bpb:.4f} (step {step})"
        assert "`ptlab pretrain --config config.yaml`" in card
        assert config_block(card) == (result.run_dir / "config.yaml").read_text()
        assert yaml.safe_load(config_block(card))["objective"]["noise_density"] == 0.2
        assert 'AutoTokenizer.from_pretrained("path/to/this/directory")' in card


def test_a_finetuned_checkpoints_card_names_the_task_its_scores_and_the_best_step(tmp_path, tokenizer_dir):
    from ptlab.downstream.finetune import finetune

    cfg = load_config(custom_config(tmp_path, tokenizer_dir), ["model.d_model=32", "model.d_ff=64",
                                                                "model.num_heads=2", "max_steps=4",
                                                                "train.eval_every=2", "task.max_eval_examples=8",
                                                                "train.threads=1"], FinetuneConfig)
    result = finetune(cfg, show_progress=False)
    out, _ = export_hf(result.checkpoint, tmp_path / "hf")
    card = (out / "README.md").read_text()
    rows = table(card)
    assert "fine-tuned with ptlab" in card and rows["objective"] == "fine-tuned on a task of its own (text-to-text)"
    task = cfg.task
    assert rows["data"] == f"`{task.train}`, `{task.validation}`, `{task.test}`"
    assert rows["initialised from"] == "random weights" and rows["tokenizer"] == f"`{tokenizer_dir}`"
    assert rows["steps"].startswith("4") and (str(result.best_step) in rows["steps"])
    assert rows["test"] == ", ".join(f"{k} {v:.4g}" for k, v in result.test.items())
    assert rows["validation"] == ", ".join(f"{k} {v:.4g}" for k, v in result.validation.items())
    assert "`ptlab finetune --config config.yaml`" in card
    assert config_block(card) == (tmp_path / "run" / "config.yaml").read_text()


def test_a_checkpoint_outside_a_run_says_its_training_is_not_recorded(tmp_path):
    cfg = ModelConfig(family="gpt2", vocab_size=64, d_model=16, d_ff=32, num_heads=2, num_layers=1, eos_token_id=1)
    write_checkpoint(tmp_path / "ckpt", build_model(cfg), Config(model=cfg), None)
    (tmp_path / "config.yaml").write_text("not: a run\n")  # a config without metrics.jsonl is not a run's
    out, _ = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and table(card)["output head"] == "tied to the input embedding"
    assert "Not recorded: " in card and "## How it was made" not in card
    assert "AutoTokenizer" not in card  # the checkpoint has no tokenizer, so neither has the export
