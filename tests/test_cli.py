import csv
import json
import re
import subprocess
import sys

import pytest

from ptlab.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ptlab", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [[], ["demo"], ["pretrain"], ["tokenizer"], ["tokenizer", "train"], ["tokenize"],
                                  ["objectives"], ["objectives", "list"], ["objectives", "show"], ["import-hf"],
                                  ["export-hf"], ["generate"]])
def test_every_command_explains_itself(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: ptlab" in out and len(out.splitlines()) > 5


def test_bad_config_key_is_one_line_and_nonzero():
    result = run_cli("pretrain", "train.max_stpes=3")
    assert result.returncode == 2
    assert result.stderr.strip() == ("ptlab: error: unknown config key 'train.max_stpes'; "
                                     "did you mean 'train.max_steps'?")
    assert "Traceback" not in result.stderr


def test_overrides_after_options_are_taken_and_other_strays_rejected():
    result = run_cli("pretrain", "--quiet", "train.max_stpes=3")  # reaches the config, which names the bad key
    assert result.returncode == 2 and "did you mean 'train.max_steps'" in result.stderr
    result = run_cli("objectives", "list", "train.max_steps=3")  # a command without overrides
    assert result.returncode == 2 and "unrecognized arguments: train.max_steps=3" in result.stderr


def test_missing_input_file_is_a_clear_error(tmp_path):
    result = run_cli("tokenizer", "train", "--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "t"))
    assert result.returncode == 2
    assert "corpus file not found" in result.stderr and "Traceback" not in result.stderr


def test_invalid_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    result = run_cli("tokenizer", "train", "--input", str(bad), "--output", str(tmp_path / "t"), "--quiet")
    assert result.returncode == 2
    assert f"{bad} line 2: invalid JSON" in result.stderr


def test_tokenizer_train_and_tokenize(tmp_path, small_corpus):
    result = run_cli("tokenizer", "train", "--input", str(small_corpus["train"]), "--vocab-size", "1500",
                     "--output", str(tmp_path / "tok"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "<extra_id_0>=1499" in result.stdout
    result = run_cli("tokenize", "--tokenizer", str(tmp_path / "tok"), "--input", str(small_corpus["validation"]),
                     "--output", str(tmp_path / "shard"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "shard" / "tokens.bin").stat().st_size > 0


LECTURE = "Thank you for inviting me to your party last week ."


def show_json(capsys, *args):
    assert main(["objectives", "show", *args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_objectives_list_names_every_objective(capsys):
    from ptlab.objectives import REGISTRY

    assert main(["objectives", "list"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert name in out
    assert "mask_ratio=0.3" in out and "noise_density=0.15" in out


def test_lecture_example_span_corruption(capsys):
    [shown] = show_json(capsys, "span_corruption", "--tokenizer", "words", "--text", LECTURE,
                        "--set", "noise_density=0.3", "--set", "mean_span_length=1.5")
    inputs, targets = shown["inputs"], shown["targets"]
    sentinels = [t for t in inputs if t.startswith("<extra_id_")]
    assert sentinels == ["<extra_id_0>", "<extra_id_1>"] == [t for t in targets if t.startswith("<extra_id_")]
    assert inputs[-1] == targets[-1] == "</s>" and targets[0] == "<extra_id_0>"
    spans = " ".join(targets[:-1]).split("<extra_id_1>")
    rebuilt = " ".join(inputs[:-1]).replace("<extra_id_0>", spans[0].replace("<extra_id_0>", "").strip()) \
        .replace("<extra_id_1>", spans[1].strip())
    assert rebuilt.split() == LECTURE.split()


def test_lecture_example_every_t5_objective(capsys):
    words = LECTURE.split()
    for name in ("iid_replace_spans", "drop_tokens", "bert_style", "mass_style", "deshuffle", "prefix_lm"):
        noise = ["--set", "noise_density=0.3"] if name not in ("deshuffle", "prefix_lm") else []
        [shown] = show_json(capsys, name, "--tokenizer", "words", "--text", LECTURE, "--seed", "3", *noise)
        inputs, targets = shown["inputs"][:-1], shown["targets"][:-1]
        if name == "drop_tokens":
            assert sorted(inputs + targets) == sorted(words) and len(targets) > 0
        elif name in ("bert_style", "mass_style"):
            assert targets == words and "<mask>" in inputs and len(inputs) == len(words)
        elif name == "deshuffle":
            assert sorted(inputs) == sorted(words) and targets == words
        elif name == "prefix_lm":
            assert inputs + targets == words
        else:
            assert any(t.startswith("<extra_id_") for t in inputs)


def test_objectives_show_text_file_one_document_per_line(tmp_path, capsys):
    text = tmp_path / "docs.txt"
    text.write_text("one two three four five six .\n\nseven eight nine ten eleven twelve .\n")
    shown = show_json(capsys, "bart", "--text-file", str(text))
    assert len(shown) == 2 and all("<mask>" in s["inputs"] for s in shown)
    assert shown[1]["targets"] == "seven eight nine ten eleven twelve . </s>".split()


def test_objectives_show_with_a_trained_tokenizer(tmp_path, unigram_tokenizer, capsys):
    unigram_tokenizer.save(tmp_path / "tok")
    [shown] = show_json(capsys, "bart_text_infilling", "--tokenizer", str(tmp_path / "tok"), "--text",
                        "The quick brown fox jumps over the lazy dog. " * 4)
    assert "<mask>" in shown["inputs"] and shown["targets"][-1] == "</s>"


@pytest.mark.parametrize("args,message", [
    (["bertstyle"], "unknown objective 'bertstyle' (did you mean bert_style?)"),
    (["span_corruption", "--set", "noise=0.3"], "unknown config key 'objective.noise' for objective span_corruption"),
    (["span_corruption", "--set", "noise_density"], "--set 'noise_density' must look like key=value"),
    (["span_corruption", "--text-file", "/nonexistent.txt"], "text file not found"),
])
def test_objectives_show_errors_are_one_line(args, message):
    if "--text-file" not in args:
        args = [*args, "--text", LECTURE]
    result = run_cli("objectives", "show", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_import_generate_export_from_the_command_line(tmp_path, unigram_tokenizer):
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=unigram_tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                      bos_token_id=None, eos_token_id=1, pad_token_id=0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    unigram_tokenizer.tokenizer.save(str(tmp_path / "hf" / "tokenizer.json"))
    assert run_cli("import-hf", str(tmp_path / "hf"), str(tmp_path / "ours")).returncode == 0
    sample = ["generate", str(tmp_path / "ours"), "--prompt", "In the beginning", "--sample", "--seed", "3",
              "--max-new-tokens", "6"]
    first, second = run_cli(*sample), run_cli(*sample)
    assert first.returncode == 0 and first.stdout == second.stdout and first.stdout.strip()
    greedy = run_cli("generate", str(tmp_path / "ours"), "--prompt", "In the beginning", "--num-beams", "2")
    assert greedy.returncode == 0
    exported = run_cli("export-hf", str(tmp_path / "ours"), str(tmp_path / "back"))
    assert exported.returncode == 0 and (tmp_path / "back" / "config.json").is_file()
    again = run_cli("export-hf", str(tmp_path / "ours"), str(tmp_path / "back"))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"


def test_import_of_a_non_model_directory_is_one_line(tmp_path):
    result = run_cli("import-hf", str(tmp_path), str(tmp_path / "out"))
    assert result.returncode == 2 and "config.json not found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---- pretrain --resume / --restart -------------------------------------------------------------------------------

def tiny_pretrain_args(run_dir, corpus, tokenizer_dir, steps):
    return [f"run_dir={run_dir}", f"data.train_files=[{corpus['train']}]",
            f"data.validation_files=[{corpus['validation']}]", f"data.tokenizer={tokenizer_dir}",
            "data.vocab_size=2000", "model.family=gpt2", "model.d_model=32", "model.d_ff=64", "model.num_heads=2",
            "model.num_layers=1", "objective.name=causal_lm", "objective.inputs_length=32", "train.batch_size=4",
            f"train.max_steps={steps}", "train.warmup_steps=1", "train.eval_every=0", "train.eval_batches=1",
            "train.checkpoint_every=2", "train.keep_checkpoints=10", "train.log_every=1", "train.precision=fp32",
            "train.compile=false", "train.threads=1"]


def step_losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r and "event" not in r}


def events(run_dir):
    return [(r["event"], r["step"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "event" in r]


def checkpoint_steps(run_dir):
    return sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").iterdir())


def test_resume_with_nothing_to_resume_is_one_line(tmp_path, small_corpus, tokenizer_dir, capsys):
    run_dir = tmp_path / "run"
    code = main(["pretrain", "--resume", "--quiet", *tiny_pretrain_args(run_dir, small_corpus, tokenizer_dir, 4)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ptlab: error: nothing to resume: no valid checkpoint in")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())


def test_resume_continues_exactly_and_restart_starts_afresh(tmp_path, small_corpus, tokenizer_dir, capsys):
    import shutil

    run_dir = tmp_path / "run"
    args = tiny_pretrain_args(run_dir, small_corpus, tokenizer_dir, 6)
    assert main(["pretrain", "--quiet", *args]) == 0
    uninterrupted = step_losses(run_dir)
    assert sorted(uninterrupted) == [1, 2, 3, 4, 5, 6] and checkpoint_steps(run_dir) == [2, 4, 6]

    # as if the run had died after its step-2 checkpoint
    for step in (4, 6):
        shutil.rmtree(run_dir / "checkpoints" / f"step_{step:07d}")
    assert main(["pretrain", "--resume", "--quiet", *args]) == 0
    assert events(run_dir)[:2] == [("start", 0), ("resume", 2)]
    assert step_losses(run_dir) == uninterrupted  # steps 3-6 recomputed to the same losses, 1-2 kept
    assert checkpoint_steps(run_dir) == [2, 4, 6]

    notes = run_dir / "notes.txt"  # the user's own file in the run directory
    notes.write_text("keep me")
    (run_dir / "checkpoints" / "step_0000009").mkdir()  # a stale checkpoint directory of an earlier run
    restart_args = tiny_pretrain_args(run_dir, small_corpus, tokenizer_dir, 2)
    assert main(["pretrain", "--restart", "--quiet", *restart_args]) == 0
    assert checkpoint_steps(run_dir) == [2]  # every old checkpoint is gone
    assert events(run_dir) == [("start", 0), ("end", 2)] and sorted(step_losses(run_dir)) == [1, 2]
    assert step_losses(run_dir)[1] == uninterrupted[1]  # step 1 again, from the initial weights
    assert notes.read_text() == "keep me"
    capsys.readouterr()


def test_resume_and_restart_together_are_refused():
    result = run_cli("pretrain", "--resume", "--restart")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr


# ---- probe ---------------------------------------------------------------------------------------------------------

def test_probe_matches_logistic_regression_on_independently_pooled_states(tmp_path, unigram_tokenizer, capsys):
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from test_finetune import write_task

    from ptlab.config import Config, ModelConfig
    from ptlab.models import build_model
    from ptlab.train.checkpoint import write_checkpoint

    files = write_task(tmp_path)
    torch.manual_seed(0)
    cfg = ModelConfig(family="t5", vocab_size=unigram_tokenizer.vocab_size, d_model=32, num_heads=2, num_layers=1,
                      d_ff=64, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model = build_model(cfg).eval()
    write_checkpoint(tmp_path / "ckpt", model, Config(model=cfg), unigram_tokenizer)
    code = main(["probe", str(tmp_path / "ckpt"), "--set", f"train={files['train']}", "--set",
                 f"validation={files['validation']}", "--set", "input_template=review: {review}", "--set",
                 "target_field=verdict", "--set", "metrics=[accuracy]"])
    out = capsys.readouterr().out
    assert code == 0
    printed = float(out.split("accuracy")[-1])

    def pooled(path):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        states = []
        with torch.no_grad():
            for row in rows:  # one review at a time: no padding to get wrong
                ids = torch.tensor([unigram_tokenizer.encode(f"review: {row['review']}") + [1]])
                states.append(model.encode(ids, torch.ones_like(ids))[0].mean(0).numpy())
        return np.array(states), [row["verdict"] for row in rows]

    x_train, y_train = pooled(files["train"])
    x_eval, y_eval = pooled(files["validation"])
    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(max_iter=2000, random_state=0).fit(scaler.transform(x_train), y_train)
    expected = 100 * probe.score(scaler.transform(x_eval), y_eval)
    assert printed == pytest.approx(expected, abs=100 / len(y_eval) + 1e-6)  # at most one review apart
    # the features themselves: ptlab's batched, padded pooling against the one-at-a-time means
    from ptlab.config import TaskConfig
    from ptlab.data.tasks import resolve_task
    from ptlab.downstream.evaluate import encode_pairs
    from ptlab.downstream.probe import pooled_states

    task = resolve_task(TaskConfig(train=str(files["train"]), input_template="review: {review}",
                                   target_field="verdict", metrics=["accuracy"]))
    batched = pooled_states(model, encode_pairs(task.examples("train"), unigram_tokenizer, task), 0)
    np.testing.assert_allclose(batched, x_train, rtol=1e-4, atol=1e-5)
    assert expected > 75  # the good/bad words survive mean pooling even in a random encoder


# ---- demo ----------------------------------------------------------------------------------------------------------

def test_demo_takes_overrides_and_names_a_bad_key_before_any_work(tmp_path):
    result = run_cli("demo", f"run_dir={tmp_path / 'demo'}", "train.max_stpes=3")
    assert result.returncode == 2 and "did you mean 'train.max_steps'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_demo_runs_end_to_end_when_shrunk(tmp_path, small_corpus, tokenizer_dir):
    result = run_cli_long("demo", "--quiet", f"run_dir={tmp_path / 'demo'}",
                          f"data.train_files=[{small_corpus['train']}]",
                          f"data.validation_files=[{small_corpus['validation']}]", f"data.tokenizer={tokenizer_dir}",
                          "data.vocab_size=2000", "model.d_model=32", "model.d_kv=8", "model.d_ff=64",
                          "model.num_layers=1", "objective.inputs_length=32", "train.max_steps=6",
                          "train.warmup_steps=1", "train.eval_every=0", "train.eval_batches=1", "train.compile=false",
                          "data.decontaminate=[rt_polarity]")
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("validation loss", "a unigram model of the targets", "validation bits per byte", "one word masked",
                 "top-5",
                 "Downstream: debian_summaries", "one held-out package description", "Downstream: rt_polarity",
                 "steps on the task's unlabeled training reviews", "majority label",
                 "Verdicts", "demo finished in"):
        assert line in result.stdout, line
    verdicts = result.stdout.split("Verdicts")[1].splitlines()[1:3]
    assert [v.split(":")[0].strip() for v in verdicts] == ["debian_summaries", "rt_polarity"]
    assert all(re.search(r"(pays off|hurts|no clear difference), [+-]\d", v) for v in verdicts), verdicts
    assert (tmp_path / "demo" / "checkpoints").is_dir() and (tmp_path / "demo" / "tapt-rt_polarity").is_dir()


@pytest.mark.slow
def test_the_demo_as_shipped_pays_off_on_summarization(tmp_path):
    """The demo's headline claim, on its own corpus, model and budget (at the precision `auto` picks: fp32 on a CPU
    without native bf16)."""
    result = run_cli_long("demo", "--quiet", f"run_dir={tmp_path / 'demo'}", timeout=3600)
    assert result.returncode == 0, result.stderr[-2000:]
    verdicts = dict(line.strip().split(":", 1) for line in result.stdout.split("Verdicts")[1].splitlines()[1:3])
    assert re.match(r"pre-training pays off, \+\d", verdicts["debian_summaries"].strip()), result.stdout[-3000:]


def run_cli_long(*args, timeout: int = 1200):
    return subprocess.run([sys.executable, "-m", "ptlab", *args], capture_output=True, text=True, timeout=timeout)
