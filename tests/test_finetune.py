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
from ptlab.data.tasks import resolve_task
from ptlab.downstream.evaluate import encode_pairs, predict
from ptlab.downstream.finetune import finetune
from ptlab.models import build_model

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
    # the oracle: accuracy counted here from the predictions against the verdicts in test.csv
    with open(tmp_path / "test.csv", newline="", encoding="utf-8") as f:
        verdicts = [row["verdict"] for row in csv.DictReader(f)]
    evaluated_rows = [json.loads(line) for line in (tmp_path / "preds.jsonl").open()]
    assert [r["target"] for r in evaluated_rows] == [p["target"] for p in predictions] == verdicts
    accuracy = 100 * np.mean([r["prediction"] == v for r, v in zip(evaluated_rows, verdicts)])
    assert f"accuracy {accuracy:.2f}" in evaluated.stdout
    assert "target_bpb " in evaluated.stdout  # the loss on the reference targets, in bits per byte
    # the same checkpoint predicts the same, and fine-tuning scored its test predictions the same way
    assert [r["prediction"] for r in evaluated_rows] == [p["prediction"] for p in predictions]
    assert scores["test"]["accuracy"] == pytest.approx(
        100 * np.mean([p["prediction"] == v for p, v in zip(predictions, verdicts)]))


def test_a_decoder_only_model_fine_tunes_too(tmp_path, tokenizer_dir):
    cfg = load_config(custom_config(tmp_path, tokenizer_dir, family="llama"), [], cls=FinetuneConfig)
    result = finetune(cfg, show_progress=False)
    assert result.test["accuracy"] > 80


def test_fine_tuning_reads_the_device_only_at_log_and_evaluation_steps(tmp_path, tokenizer_dir, monkeypatch):
    """As pre-training does: steps run on the device, their losses are read back together at log and evaluation
    steps (a sync each on a GPU), every step exactly once; the logged losses are those steps' own."""
    import ptlab.train.loop as module  # the one loop pre-training and fine-tuning share

    reads = []

    def recording(pending, *args, **kwargs):
        reads.append([done for done, _ in pending])
        return read_pending(pending, *args, **kwargs)

    read_pending = module.read_pending
    monkeypatch.setattr(module, "read_pending", recording)
    cfg = load_config(custom_config(tmp_path, tokenizer_dir, epochs=2, patience=10), ["train.log_every=10"],
                      cls=FinetuneConfig)
    result = finetune(cfg, show_progress=False)
    read_at = [steps[-1] for steps in reads]
    assert read_at == [10, 20, 25, 30, 40, 50]  # 25 steps an epoch, evaluated at 25 and 50
    assert [step for steps in reads for step in steps] == list(range(1, result.steps + 1))
    logged = [h["step"] for h in result.history if "loss" in h and "event" not in h and "val_accuracy" not in h]
    assert logged[:5] == [10, 20, 30, 40, 50]


def label_log_likelihood(model, inputs, label):
    """log p(label tokens | inputs), one example at a time and unpadded: the ranking's oracle."""
    with torch.no_grad():
        if model.is_encoder_decoder:
            start = model.config.decoder_start_token_id
            decoder_in = torch.tensor([[start, *label[:-1]]])
            log_probs = model(torch.tensor([inputs]), decoder_in).log_softmax(-1)[0]
        else:  # one sequence: position t predicts token t + 1
            log_probs = model(torch.tensor([[*inputs, *label]])).log_softmax(-1)[0, len(inputs) - 1:-1]
    return log_probs.gather(1, torch.tensor(label)[:, None]).sum().item()


@pytest.mark.parametrize("family", ["t5", "gpt2"])
def test_label_ranking_picks_the_label_with_the_highest_summed_log_likelihood(tmp_path, unigram_tokenizer, family):
    files = write_task(tmp_path)
    task = resolve_task(TaskConfig(train=str(files["train"]), test=str(files["test"]), input_template="{review}",
                                   target_field="verdict", metrics=["accuracy"]))
    assert task.labels == ["disliked", "liked"]  # taken from the training file
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, vocab_size=unigram_tokenizer.vocab_size, d_model=64, num_heads=2, num_layers=1,
                      d_ff=64, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model = build_model(cfg)
    # a few steps of training, so that the model's choice depends on the review but is not yet always right
    from ptlab.downstream.evaluate import make_batch
    from ptlab.train.batches import to_tensors
    from ptlab.train.loop import summed_loss

    train = encode_pairs(task.examples("train"), unigram_tokenizer, task)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(75):
        start = step * 16 % len(train)
        batch = to_tensors(make_batch(model, train[start:start + 16], 0))
        (summed_loss(model, batch) / (batch["labels"] != -100).sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
    examples = encode_pairs(task.examples("test"), unigram_tokenizer, task)
    label_ids = [unigram_tokenizer.encode(label) + [1] for label in task.labels]  # each label's tokens and EOS
    predictions = predict(model, unigram_tokenizer, task, examples, batch_size=8)  # padded batches of 4 x 2 labels
    oracle = np.array([[label_log_likelihood(model, example.inputs.tolist(), label) for label in label_ids]
                       for example in examples])
    # the scores behind the ranking, batched and padded, are the summed log-likelihoods (not, say, per token)
    from ptlab.downstream.evaluate import _label_log_likelihoods

    scores = _label_log_likelihoods(model, examples, [np.array(ids) for ids in label_ids], 0, "fp32", "cpu")
    np.testing.assert_allclose(scores, oracle, rtol=1e-4, atol=1e-4)
    assert np.abs(oracle[:, 0] - oracle[:, 1]).min() > 1e-3  # no near-ties to flip
    expected = [task.labels[i] for i in oracle.argmax(axis=1)]
    assert predictions == expected
    assert 10 < sum(e == "liked" for e in expected) < 70  # the oracle is not one constant answer


def test_task_errors_name_the_file_and_field(tmp_path):
    from ptlab.errors import PtlabError

    files = write_task(tmp_path)
    task = resolve_task(TaskConfig(train=str(files["train"]), input_template="{text}", target_field="verdict",
                                   metrics=["accuracy"]))
    with pytest.raises(PtlabError, match=r"train.csv line 2: no field 'text'.*fields: review, verdict"):
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
                             "train.threads=2", f"epochs={epochs}",
                             "patience=3"],
                      cls=FinetuneConfig)
    result = finetune(cfg, show_progress=False)
    # the first 400 test reviews are 59.75% positive: beat always answering "positive" by more than noise
    majority = 100 * sum(t == "positive" for _, t in result_task_examples(400)) / 400
    assert result.test["accuracy"] > majority + 3
