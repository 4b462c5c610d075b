"""Fine-tuning and evaluation: a custom task defined only in YAML, both architectures, label ranking."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ptlab.config import FinetuneConfig, ModelConfig, TaskConfig, load_config
from ptlab.finetune import encode_pairs, finetune, predict
from ptlab.models import build_model
from ptlab.tasks import resolve_task

GOOD = ["great", "wonderful", "delightful", "superb", "moving", "brilliant", "charming", "excellent"]
BAD = ["awful", "boring", "dreadful", "tedious", "clumsy", "terrible", "dull", "lifeless"]
NOUNS = ["film", "plot", "cast", "ending", "script", "score", "story", "pacing"]


def write_task(directory: Path, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    paths = {}
    for split, count in (("train", 400), ("validation", 80), ("test", 80)):
        path = directory / f"{split}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["review", "verdict"])
            for _ in range(count):
                good = rng.random() < 0.5
                word = rng.choice(GOOD if good else BAD)
                writer.writerow([f"the {rng.choice(NOUNS)} was {word} and the {rng.choice(NOUNS)} too",
                                 "liked" if good else "disliked"])
        paths[split] = path
    return paths



def custom_config(tmp_path, tokenizer_dir, family="t5", **extra) -> Path:
    files = write_task(tmp_path)
    config = {"run_dir": str(tmp_path / "run"), "seed": 0, "init": "none", "tokenizer": str(tokenizer_dir),
              "model": {"family": family, "d_model": 64, "d_ff": 128, "num_heads": 4, "num_layers": 1},
              "task": {"train": str(files["train"]), "validation": str(files["validation"]),
                       "test": str(files["test"]), "input_template": "review: {review}", "target_field": "verdict",
                       "metrics": ["accuracy", "f1"]},
              "train": {"batch_size": 16, "lr": 3e-3, "warmup_steps": 10, "eval_every": 25, "precision": "fp32",
                        "threads": 2, "optimizer": "adamw"},
              "epochs": 3, "patience": 4, **extra}
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_custom_yaml_task_trains_and_evaluates_from_the_command_line(tmp_path, tokenizer_dir):
    config = custom_config(tmp_path, tokenizer_dir)
    run = subprocess.run([sys.executable, "-m", "ptlab", "finetune", "--config", str(config), "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert scores["test"]["accuracy"] > 80
    predictions = [json.loads(line) for line in (tmp_path / "run" / "test_predictions.jsonl").open()]
    assert {p["prediction"] for p in predictions} <= {"liked", "disliked"}
    evaluated = subprocess.run([sys.executable, "-m", "ptlab", "evaluate", str(tmp_path / "run" / "best"),
                                "--set", f"train={tmp_path / 'train.csv'}", "--set", f"test={tmp_path / 'test.csv'}",
                                "--set", "input_template=review: {review}", "--set", "target_field=verdict",
                                "--set", "metrics=[accuracy]", "--output", str(tmp_path / "preds.jsonl"), "--quiet"],
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert f"accuracy {scores['test']['accuracy']:.2f}" in evaluated.stdout


def test_a_decoder_only_model_fine_tunes_too(tmp_path, tokenizer_dir):
    cfg = load_config(custom_config(tmp_path, tokenizer_dir, family="llama"), [], cls=FinetuneConfig)
    result = finetune(cfg, show_progress=False)
    assert result.test["accuracy"] > 80


@pytest.mark.parametrize("family", ["t5", "gpt2"])
def test_label_ranking_only_ever_predicts_a_label(tmp_path, unigram_tokenizer, family):
    files = write_task(tmp_path)
    task = resolve_task(TaskConfig(train=str(files["train"]), test=str(files["test"]), input_template="{review}",
                                   target_field="verdict", metrics=["accuracy"]))
    assert task.labels == ["disliked", "liked"]  # taken from the training file
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, vocab_size=unigram_tokenizer.vocab_size, d_model=32, num_heads=2, num_layers=1,
                      d_ff=64, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model = build_model(cfg)  # untrained: its raw outputs would be arbitrary tokens
    examples = encode_pairs(task.examples("test"), unigram_tokenizer, task)
    predictions = predict(model, unigram_tokenizer, task, examples)
    assert len(predictions) == 80 and set(predictions) <= {"disliked", "liked"}


def test_task_errors_name_the_file_and_field(tmp_path):
    from ptlab.errors import PtlabError

    files = write_task(tmp_path)
    task = resolve_task(TaskConfig(train=str(files["train"]), input_template="{text}", target_field="verdict",
                                   metrics=["accuracy"]))
    with pytest.raises(PtlabError, match=r"train.csv record 1: no field 'text'.*fields: review, verdict"):
        task.examples("train")
    with pytest.raises(PtlabError, match="unknown task 'rt_polarty'"):
        resolve_task(TaskConfig(name="rt_polarty"))


def result_task_examples(count):
    return resolve_task(TaskConfig(name="rt_polarity")).examples("test")[:count]


@pytest.mark.parametrize("family,optimizer,lr,epochs", [("t5", "adamw_scale", "1e-2", 3), ("llama", "adamw", "3e-3", 4)])
def test_both_architectures_beat_chance_on_rt_polarity(tmp_path, tokenizer_dir, family, optimizer, lr, epochs):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"tokenizer={tokenizer_dir}", f"model.family={family}",
                             "model.d_model=64", "model.d_ff=128", "model.num_heads=4", "model.num_layers=1",
                             "task.name=rt_polarity", "task.max_train_examples=3000", "task.max_eval_examples=400",
                             "task.max_input_length=48", "train.batch_size=32", f"train.lr={lr}",
                             f"train.optimizer={optimizer}", "train.warmup_steps=20", "train.eval_every=60",
                             "train.precision=bf16", "train.threads=2", f"epochs={epochs}", "patience=3"],
                      cls=FinetuneConfig)
    result = finetune(cfg, show_progress=False)
    # the first 400 test reviews are 59.75% positive: beat always answering "positive" by more than noise
    majority = 100 * sum(t == "positive" for _, t in result_task_examples(400)) / 400
    assert result.test["accuracy"] > majority + 3
