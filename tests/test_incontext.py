"""Prompting a pre-trained model (`ptlab evaluate --shots K`): seeded demonstrations that never hold an evaluated
example, prompts fitted to the context, label ranking against log-probabilities computed here by hand, greedy
generation against a step-by-step decode, both architectures, custom tasks and their errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ptlab.config import (
    Config,
    FinetuneConfig,
    ModelConfig,
    TaskConfig,
    from_dict,
    load_config,
)
from ptlab.data.tasks import resolve_task
from ptlab.downstream.incontext import (
    SEPARATOR,
    build_prompt,
    fit_prompt,
    generate_answers,
    prompted_examples,
    rank_labels,
    score_prompted,
)
from ptlab.errors import PtlabError
from ptlab.models import build_model
from ptlab.train.checkpoint import write_checkpoint

GOOD = ["great", "wonderful", "delightful", "superb", "moving", "brilliant"]
BAD = ["awful", "boring", "dreadful", "tedious", "clumsy", "terrible"]
NOUNS = ["film", "plot", "cast", "ending", "script", "score"]
PROMPT = "Review: {review}\nVerdict:"
VERBALIZER = {"disliked": " bad", "liked": " good"}


def write_split(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"review": r, "verdict": v}) + "\n" for r, v in rows), encoding="utf-8")
    return path


def reviews(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    rows = []
    for _ in range(count):
        good = rng.random() < 0.5
        words = " ".join(rng.choice(NOUNS) for _ in range(rng.integers(1, 12)))  # lengths vary: padding is tested
        rows.append((f"the {words} was {rng.choice(GOOD if good else BAD)}", "liked" if good else "disliked"))
    return rows


@pytest.fixture()
def task_files(tmp_path) -> dict[str, Path]:
    """A train split that also holds three of the test examples (a leak the demonstrations must avoid)."""
    rng = np.random.default_rng(0)
    test = reviews(rng, 12)
    train = reviews(rng, 60) + test[:3]
    return {"train": write_split(tmp_path / "train.jsonl", train), "test": write_split(tmp_path / "test.jsonl", test)}


def custom_task(files, prompt=PROMPT, verbalizer=VERBALIZER, **keys):
    return resolve_task(TaskConfig(train=str(files["train"]), test=str(files["test"]), input_template="{review}",
                                   target_field="verdict", metrics=["accuracy"], prompt=prompt,
                                   verbalizer=verbalizer, **keys))


def tiny_model(tokenizer, family: str, seed: int = 0):
    """A random model whose choices depend on the prompt (a large initialisation spreads the logits)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(family=family, vocab_size=tokenizer.vocab_size, d_model=32, d_ff=64, num_heads=2, num_layers=1,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, max_position_embeddings=512,
                      initializer_factor=20.0)
    return build_model(cfg).eval()


def test_demonstrations_are_seeded_from_train_and_never_an_evaluated_example(task_files, unigram_tokenizer):
    task = custom_task(task_files)
    queries = [p for p, _ in task.prompts("test")]
    train = {p + VERBALIZER[t] for p, t in task.prompts("train")}
    first = prompted_examples(task, unigram_tokenizer, "test", 4, seed=0, budget=10_000)
    again = prompted_examples(task, unigram_tokenizer, "test", 4, seed=0, budget=10_000)
    other = prompted_examples(task, unigram_tokenizer, "test", 4, seed=1, budget=10_000)
    assert [p.text for p in first] == [p.text for p in again]
    assert [p.text for p in first] != [p.text for p in other]
    for prompted, query in zip(first + other, queries + queries):
        *demonstrations, last = prompted.text.split(SEPARATOR)
        assert last == query and prompted.shots == len(demonstrations) == 4
        assert len(set(demonstrations)) == 4 and set(demonstrations) <= train
        # no demonstration is any evaluated example (three of them are in the train file too)
        assert not {d.rsplit("\n", 1)[0] for d in demonstrations} & set(queries)
    # each example's draw depends on (seed, its number) alone: evaluating fewer examples changes no prompt
    fewer = prompted_examples(custom_task(task_files, max_eval_examples=5), unigram_tokenizer, "test", 4, 0, 10_000)
    assert [p.text for p in fewer] == [p.text for p in first[:5]]
    with pytest.raises(PtlabError, match="train split"):
        prompted_examples(task, unigram_tokenizer, "train", 1, 0, 10_000)


def test_demonstrations_are_dropped_farthest_first_to_fit_the_context(task_files, bpe_tokenizer):
    task = custom_task(task_files)
    full = prompted_examples(task, bpe_tokenizer, "test", 8, seed=0, budget=10_000)
    budget = int(np.median([len(p.context) for p in full])) - 20
    fitted = prompted_examples(task, bpe_tokenizer, "test", 8, seed=0, budget=budget)
    assert 0 < np.mean([p.shots for p in fitted]) < 8
    for whole, cut in zip(full, fitted):
        assert len(cut.context) + max(map(len, cut.answers)) <= budget
        kept = cut.text.split(SEPARATOR)
        assert kept == whole.text.split(SEPARATOR)[len(whole.text.split(SEPARATOR)) - len(kept):]  # the nearest kept
        assert bpe_tokenizer.decode(cut.context) == cut.text.rstrip()
    # a query longer than the context alone: cut from the left, its end (and the answer) kept
    text, context, answers, kept = fit_prompt(bpe_tokenizer, ["one demo good"], "word " * 50 + "Verdict:",
                                              [" bad", " good"], budget=12)
    assert kept == 0 and len(context) + max(map(len, answers)) == 12
    assert context == bpe_tokenizer.encode(text)[-len(context):] and bpe_tokenizer.decode(context).endswith("Verdict:")


def hand_log_likelihood(model, context: list[int], answer: list[int]) -> float:
    """log p(answer | context) of one unpadded sequence: forward, log_softmax, gather, sum."""
    with torch.no_grad():
        if model.is_encoder_decoder:
            logits = model(torch.tensor([context + [1]]), torch.tensor([[0] + answer[:-1]]))[0]
            steps = logits
        else:  # position t predicts token t + 1
            logits = model(torch.tensor([context + answer]))[0]
            steps = logits[len(context) - 1:len(context) - 1 + len(answer)]
    return steps.log_softmax(-1).gather(1, torch.tensor(answer)[:, None]).sum().item()


@pytest.mark.parametrize("family,shots", [("gpt2", 0), ("llama", 2), ("t5", 0), ("bart", 2)])
def test_label_ranking_equals_hand_summed_log_probabilities(task_files, bpe_tokenizer, family, shots):
    # the review's last word (the sentiment) ends the prompt and the answers are one token each, so that even a
    # random model's choice depends on the review
    verbalizer = {"disliked": " and", "liked": " the"}
    task = custom_task(task_files, prompt="Verdict on {review}", verbalizer=verbalizer)
    model = tiny_model(bpe_tokenizer, family)
    prompted = prompted_examples(task, bpe_tokenizer, "test", shots, seed=0, budget=512)
    for p in prompted:  # the answers are the verbalizer's words, right after the prompt
        for label, answer in zip(task.labels, p.answers):
            assert bpe_tokenizer.decode(p.context + answer) == p.text + verbalizer[label]
    assert prompted[0].text.startswith("Verdict on ") and prompted[0].text.count(SEPARATOR) == shots
    sums, lengths = rank_labels(model, bpe_tokenizer, prompted, batch_size=5)  # padded batches, split mid-example
    oracle = np.array([[hand_log_likelihood(model, p.context, a) for a in p.answers] for p in prompted])
    np.testing.assert_allclose(sums, oracle, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(lengths, [[len(a) for a in p.answers] for p in prompted])
    scores, rows = score_prompted(model, bpe_tokenizer, task, "test", shots, seed=0, budget=512, batch_size=5)
    targets = [p.target for p in prompted]
    by_sum = [task.labels[i] for i in oracle.argmax(1)]
    per_token = [task.labels[i] for i in (oracle / lengths).argmax(1)]
    assert [r["prediction"] for r in rows] == by_sum and [r["prediction_per_token"] for r in rows] == per_token
    assert len(set(by_sum)) == 2 and np.abs(oracle[:, 0] - oracle[:, 1]).min() > 1e-3  # the prompt matters, no ties
    assert scores["accuracy"] == pytest.approx(100 * np.mean([p == t for p, t in zip(by_sum, targets)]))
    assert scores["accuracy_per_token"] == pytest.approx(100 * np.mean([p == t for p, t in zip(per_token, targets)]))
    # the loss on the true label's words, in bits per byte of those words (each answer here is one token)
    gold = [task.labels.index(t) for t in targets]
    gold_bytes = sum(len(verbalizer[t].encode("utf-8")) for t in targets)
    assert scores["target_bpb"] == pytest.approx(-oracle[np.arange(len(gold)), gold].sum() / (np.log(2) * gold_bytes),
                                                 rel=1e-4)
    train = [json.loads(line)["verdict"] for line in task_files["train"].open()]
    majority = max(set(train), key=train.count)  # the floor is the train split's majority, not the test split's
    assert scores["majority_class"] == majority
    assert scores["majority_accuracy"] == pytest.approx(100 * np.mean([t == majority for t in targets]))


def hand_greedy(model, context: list[int], steps: int) -> list[int]:
    """Greedy decoding by full forward passes (no cache), until EOS."""
    new: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            if model.is_encoder_decoder:
                logits = model(torch.tensor([context + [1]]), torch.tensor([[0] + new]))[0, -1]
            else:
                logits = model(torch.tensor([context + new]))[0, -1]
            new.append(int(logits.argmax()))
            if new[-1] == 1:
                return new[:-1]
    return new


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_generation_is_greedy_and_stops_at_a_newline(tmp_path, bpe_tokenizer, family):
    rows = [(f"the {n} {w}", f"{w} {n}\nsecond line") for n in NOUNS for w in GOOD[:2]]
    files = {s: write_split(tmp_path / f"{s}.jsonl", rows) for s in ("train", "test")}
    task = resolve_task(TaskConfig(train=str(files["train"]), test=str(files["test"]), input_template="{review}",
                                   target_field="verdict", metrics=["exact_match"], prompt="Text: {review}\nSwap:",
                                   max_target_length=6))
    model = tiny_model(bpe_tokenizer, family, seed=3)
    prompted = prompted_examples(task, bpe_tokenizer, "test", 0, seed=0, budget=512)
    answers = generate_answers(model, bpe_tokenizer, prompted, 6, batch_size=4)
    expected = [bpe_tokenizer.decode(hand_greedy(model, p.context, 6)).lstrip(" ").split("\n")[0].strip()
                for p in prompted]
    assert answers == expected
    # target_bpb: the reference answer (after a space, at most max_target_length tokens) scored after the prompt
    scores, _ = score_prompted(model, bpe_tokenizer, task, "test", 0, seed=0, budget=512, batch_size=4)
    nats, num_bytes = 0.0, 0
    for p in prompted:
        whole, context = bpe_tokenizer.encode(p.text + " " + p.target), bpe_tokenizer.encode(p.text)
        answer = whole[len(context):][:6]
        nats -= hand_log_likelihood(model, p.context, answer)
        num_bytes += len(bpe_tokenizer.decode(answer).encode("utf-8"))
    assert num_bytes < sum(len((" " + p.target).encode("utf-8")) for p in prompted)  # the cut at 6 tokens counts
    assert scores["target_bpb"] == pytest.approx(nats / (np.log(2) * num_bytes), rel=1e-4)


def test_a_uniform_model_scores_log2_v_bits_per_answer_token_spread_over_its_bytes(task_files, bpe_tokenizer):
    task = custom_task(task_files)
    model = tiny_model(bpe_tokenizer, "gpt2")
    for parameter in model.parameters():
        torch.nn.init.zeros_(parameter)  # every logit 0: each id has probability 1 / V
    scores, rows = score_prompted(model, bpe_tokenizer, task, "test", 2, seed=0, budget=512)
    tokens = sum(len(bpe_tokenizer.encode(r["prompt"] + VERBALIZER[r["target"]]))
                 - len(bpe_tokenizer.encode(r["prompt"])) for r in rows)
    num_bytes = sum(len(VERBALIZER[r["target"]].encode("utf-8")) for r in rows)
    assert scores["target_bpb"] == pytest.approx(np.log2(bpe_tokenizer.vocab_size) * tokens / num_bytes, rel=1e-6)


def tiny_checkpoint(path: Path, tokenizer, family: str) -> Path:
    model = tiny_model(tokenizer, family)
    config = Config(run_dir=str(path), model=model.config)
    return write_checkpoint(path, model, config, tokenizer)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ptlab", "evaluate", *map(str, args), "--quiet"],
                          capture_output=True, text=True, timeout=300, check=False)


def test_a_custom_yaml_task_sets_prompt_and_verbalizer(tmp_path, task_files, bpe_tokenizer):
    section = {"train": str(task_files["train"]), "test": str(task_files["test"]), "input_template": "text: {review}",
               "target_field": "verdict", "metrics": ["accuracy"], "prompt": "Opinion: {review}\nSo it was",
               "verbalizer": {"liked": " fine", "disliked": " poor"}}
    config = tmp_path / "finetune.yaml"  # a fine-tuning config's task section
    config.write_text(yaml.safe_dump({"init": str(tmp_path / "ckpt"), "task": section}))
    task = resolve_task(load_config(config, [], cls=FinetuneConfig).task)
    assert task.prompts("test")[0][0].startswith("Opinion: ") and task.answer("liked") == " fine"
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", bpe_tokenizer, "gpt2")
    sets = [a for key, value in section.items() if key != "verbalizer" for a in ("--set", f"{key}={value}")]
    run = run_cli(checkpoint, *sets, "--set", "verbalizer={liked: ' fine', disliked: ' poor'}", "--shots", 2,
                  "--output", tmp_path / "preds.jsonl", "--scores", tmp_path / "scores.json")
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "preds.jsonl").open()]
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert len(rows) == scores["examples"] == 12 and scores["shots_fitted_min"] == 2
    assert {r["prediction"] for r in rows} <= {"liked", "disliked"}
    assert rows[0]["prompt"].count("\nSo it was fine") + rows[0]["prompt"].count("\nSo it was poor") == 2
    accuracy = 100 * np.mean([r["prediction"] == r["target"] for r in rows])
    assert scores["accuracy"] == pytest.approx(accuracy) and f"accuracy {accuracy:.2f}" in run.stdout
    assert f"majority-class floor ({scores['majority_class']}): accuracy" in run.stdout


def test_a_bad_prompt_key_is_one_line_and_writes_nothing(tmp_path, bpe_tokenizer):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", bpe_tokenizer, "t5")
    outputs = ("--output", tmp_path / "p.jsonl", "--scores", tmp_path / "s.json")
    run = run_cli(checkpoint, "--task", "rt_polarity", "--set", "prompt=Review: {review}", "--shots", 0, *outputs)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.strip().count("\n") == 0 and "no field 'review' for task.prompt" in run.stderr
    assert "rt_polarity/test.jsonl.gz line 1" in run.stderr
    assert not any(tmp_path.glob("p.jsonl*")) and not any(tmp_path.glob("s.json*"))
    with pytest.raises(PtlabError, match="task.verbalizer.*'good' not among the labels"):
        resolve_task(from_dict(TaskConfig, {"name": "rt_polarity", "verbalizer": {"good": " +"}}, "task."))
    with pytest.raises(PtlabError, match="task.prompt.*field without a name"):
        resolve_task(TaskConfig(name="rt_polarity", prompt="Review: {}"))


FIELD = st.sampled_from(["text", "title", "body"])
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=40, deadline=None)
@given(demonstrations=st.lists(TEXT, max_size=6), query=TEXT, budget=st.integers(8, 120),
       answers=st.lists(st.text("abc xyz", min_size=1, max_size=8), min_size=1, max_size=3, unique=True))
def test_fitted_prompts_keep_the_nearest_demonstrations_within_budget(bpe_tokenizer, demonstrations, query, budget,
                                                                       answers):
    text, context, answer_ids, kept = fit_prompt(bpe_tokenizer, demonstrations, query, answers, budget)
    assert text == build_prompt(demonstrations[len(demonstrations) - kept:], query)
    assert text.endswith(query) and text.count(SEPARATOR) >= kept
    longest = max(map(len, answer_ids))
    assert len(context) + longest <= budget or (len(context) == 1 and kept == 0)
    if kept < len(demonstrations):  # one more demonstration would not have fitted
        more = build_prompt(demonstrations[len(demonstrations) - kept - 1:], query)
        assert len(bpe_tokenizer.encode(more.rstrip())) + longest > budget
    whole = bpe_tokenizer.encode(text.rstrip())
    assert context == whole[len(whole) - len(context):]  # the end of the prompt, cut (if at all) from the left


@settings(max_examples=30, deadline=None)
@given(prefix=TEXT, field=FIELD, suffix=TEXT, value=TEXT)
def test_rendered_prompts_hold_the_record_field_verbatim(tmp_path_factory, prefix, field, suffix, value):
    def escape(text: str) -> str:
        return text.replace("{", "{{").replace("}", "}}")

    template = escape(prefix) + "{" + field + "}" + escape(suffix)
    directory = tmp_path_factory.mktemp("t")
    record = {"text": "x", "title": "y", "body": "z", field: value, "label": "a"}
    for split in ("train", "test"):
        (directory / f"{split}.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    task = resolve_task(TaskConfig(train=str(directory / "train.jsonl"), test=str(directory / "test.jsonl"),
                                   input_template="{text}", target_field="label", metrics=["accuracy"],
                                   prompt=template))
    assert task.prompts("test") == [(prefix + value + suffix, "a")]
    assert task.answer("a") == " a"  # no verbalizer: the label after a space


def load_study_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_incontext", Path(__file__).parents[1] / "studies" / "incontext.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_study_file_plans_three_sizes_per_architecture_and_a_quick_variant(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).parents[1])  # the study names its configs from the repository root
    study = load_study_module()
    full = study.load_study("configs/study-incontext.yaml", quick=False)
    quick = study.load_study("configs/study-incontext.yaml", quick=True)
    assert quick["shots"] == [0, 1, 4] and full["shots"] == [0, 1, 4, 16]
    families = {}
    for name in full["models"]:
        cfg = study.run_config(quick, name, tmp_path)
        families.setdefault(cfg.model.family, []).append(cfg.model.d_model)
        assert cfg.train.max_steps == 60 and cfg.train.checkpoint_every == 30  # the quick keys, then the model's own
        assert cfg.run_dir == str(tmp_path / name) and cfg.data.tokenizer.startswith(str(tmp_path))
    assert families == {"gpt2": [32, 64, 96], "t5": [32, 64, 96]}
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: x\ntasks: [debian_summaries]\nshots: [0]\ndemo_seeds: [0]\neval_examples: 4\nmodels: {}\n")
    with pytest.raises(PtlabError, match="debian_summaries is not a classification task"):
        study.load_study(str(bad), quick=False)
    rows = [{"model": "m", "family": "gpt2", "step": step, "tokens": 1000 * step, "parameters": 2e6, "task": "t",
             "shots": shots, "seed": seed, "accuracy": 50.0 + step + seed, "accuracy_per_token": 40.0,
             "shots_fitted_mean": float(shots), "examples": 8, "majority_class": "a", "majority_accuracy": 62.5}
            for step in (0, 10) for shots in (0, 4) for seed in (0, 1)]
    study.write_table({"tasks": ["t"], "shots": [0, 4], "models": {"m": {}}}, rows, tmp_path / "table.md")
    table = (tmp_path / "table.md").read_text()
    assert "Majority class (a): accuracy 62.5" in table
    assert "| m | 2.00M | 10 | 0.01M | 60.5 / 40.0 | 60.5 / 40.0 [4.0] |" in table  # seeds 0 and 1 averaged
