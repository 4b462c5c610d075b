"""Weighted data mixtures: realised token shares, epochs caps, exact resume after SIGKILL, tasks as training text,
config errors and the mixture study grid."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from ptlab.config import load_config
from ptlab.data import ensure_shards
from ptlab.data.mixture import MixtureSchedule, tokenizer_texts
from ptlab.data.pipeline import pretrain_batches, resolve_objective
from ptlab.data.stream import StreamSampler, TrainingStream
from ptlab.data.tasks import task_input_texts
from ptlab.data.tokenizer import load_tokenizer
from ptlab.errors import PtlabError
from ptlab.lab.study import estimate_seconds, format_plan, load_study, plan_study
from ptlab.train.checkpoint import list_checkpoints
from ptlab.train.loop import pretrain
from ptlab.train.runlog import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory, sample_docs) -> dict[str, Path]:
    """Debian package descriptions ("web") and everything else ("books"), as two corpora."""
    root = tmp_path_factory.mktemp("sources")
    debian = [d for d in sample_docs if d["source"] == "debian_descriptions"]
    books = [d for d in sample_docs if d["source"] != "debian_descriptions"]
    return {"web": write_jsonl(root / "web.jsonl.gz", debian), "books": write_jsonl(root / "books.jsonl.gz", books),
            "validation": write_jsonl(root / "validation.jsonl.gz", books[:20] + debian[:20])}


def mixture_config(tmp_path: Path, two_sources, tokenizer_dir, weights=(0.7, 0.3), caps=(None, None), **train):
    config = {
        "run_dir": str(tmp_path / "run"), "seed": 3,
        "model": {"family": "t5", "d_model": 32, "d_ff": 64, "num_heads": 2, "num_layers": 1},
        "objective": {"name": "span_corruption", "inputs_length": 32},
        "data": {"mixture": [{"name": name, "files": [str(two_sources[name])], "weight": weight,
                              **({"epochs_cap": cap} if cap is not None else {})}
                             for name, weight, cap in zip(("web", "books"), weights, caps)],
                 "validation_files": [str(two_sources["validation"])],
                 "tokenizer": str(tokenizer_dir), "vocab_size": 2000, "shards_dir": str(tmp_path / "shards")},
        "train": {"max_steps": 6, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "log_every": 1,
                  "eval_every": 0, "eval_batches": 1, "precision": "fp32", "threads": 1, "tensorboard": False,
                  "peak_tflops": 1.0, "compile": False, **train},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def batches_of(config: Path):
    """The trainer's training batches for a config, and a map from every chunk to the source it came from."""
    cfg = load_config(config)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    mixture, _ = ensure_shards(cfg.data, tokenizer, show_progress=False)
    objective = resolve_objective(cfg.objective, quiet=True)
    data = pretrain_batches(cfg, objective, mixture, tokenizer.specials)
    origin = {}
    for name, shard in zip(mixture.names, mixture.shards):  # every chunk of every source, by its content
        tokens = np.asarray(shard.tokens)
        for start in range(0, len(tokens) - data.raw_length + 1, data.raw_length):
            origin.setdefault(tokens[start:start + data.raw_length].astype(np.int64).tobytes(), set()).add(name)
    return cfg, data, origin


def test_realised_token_shares_match_the_weights_over_1000_steps(tmp_path, two_sources, tokenizer_dir):
    cfg, data, origin = batches_of(mixture_config(tmp_path, two_sources, tokenizer_dir))
    tokens = {"web": 0, "books": 0}
    for example in range(1000 * cfg.train.batch_size):
        sources = origin[data.sampler.chunk(example).tobytes()]
        assert len(sources) == 1  # the chunk's content names its source
        made = data.example(example)
        tokens[next(iter(sources))] += len(made.inputs) + len(made.targets)  # tokens the model reads and predicts
    shares = {name: count / sum(tokens.values()) for name, count in tokens.items()}
    assert shares["web"] == pytest.approx(0.7, rel=0.01) and shares["books"] == pytest.approx(0.3, rel=0.01)
    # the trainer's per-source counts (chunk tokens) say the same
    reported = data.source_tokens(1000 * cfg.train.batch_size)
    assert reported["web"] / sum(reported.values()) == pytest.approx(0.7, abs=1e-3)


@settings(max_examples=40, deadline=None)
@given(weights=st.lists(st.floats(0.05, 1.0), min_size=2, max_size=4),
       caps=st.lists(st.one_of(st.none(), st.integers(1, 120)), min_size=4, max_size=4),
       block=st.sampled_from([7, 64, 256]))
def test_the_schedule_is_a_pure_function_of_the_example_index(weights, caps, block):
    caps = caps[:len(weights)]
    schedule = MixtureSchedule(weights, caps, block=block)
    stop = schedule.end if schedule.end is not None else 700
    served = np.zeros(len(weights), dtype=np.int64)
    for example in range(stop):
        assert (schedule.counts(example) == served).all()  # O(1) lookup == replaying every example before it
        source, number = schedule.assign(example)
        assert number == served[source]
        served[source] += 1
        assert caps[source] is None or served[source] <= caps[source]
    if schedule.end is not None:  # every source is capped, and every one served its cap
        assert list(served) == caps and schedule.end == sum(caps)
        with pytest.raises(PtlabError, match="epochs_cap"):
            schedule.assign(schedule.end)
    if all(c is None for c in caps):  # shares within one block's rounding of the weights
        share = np.asarray(weights) / sum(weights)
        assert (np.abs(served - share * stop) <= stop / block + 2).all()


def test_a_shard_and_a_mixture_are_one_kind_of_training_stream(tmp_path, two_sources, tokenizer_dir):
    cfg = load_config(mixture_config(tmp_path, two_sources, tokenizer_dir))
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    mixture, validation = ensure_shards(cfg.data, tokenizer, show_progress=False)
    objective = resolve_objective(cfg.objective, quiet=True)
    assert validation.fingerprint == validation.index["data_fingerprint"] != mixture.fingerprint
    for stream, weights in ((mixture, {"web": 0.7, "books": 0.3}), (validation, {})):
        assert isinstance(stream, TrainingStream) and stream.weights == weights
        data = pretrain_batches(cfg, objective, stream, tokenizer.specials)
        assert isinstance(data.sampler, StreamSampler) and data.sampler.capacity is None
        assert set(data.source_tokens(16)) == set(weights)  # per-source counts for named sources only
        assert len(data.batch(0, 4)["input_ids"]) == 4


def test_an_epochs_cap_redistributes_the_weight_of_an_exhausted_source(tmp_path, two_sources, tokenizer_dir):
    cfg, data, origin = batches_of(mixture_config(tmp_path, two_sources, tokenizer_dir, weights=(0.5, 0.5),
                                                  caps=(0.5, None)))
    web_chunks = data.sampler.samplers[0].num_chunks
    cap = int(0.5 * web_chunks)
    seen = []
    for example in range(4 * web_chunks):
        source = origin[data.sampler.chunk(example).tobytes()]
        if "web" in source:
            seen.append(data.sampler.chunk(example).tobytes())
    # half a pass over the web source's chunks, each at most once, then only books
    assert len(seen) == cap and len(set(seen)) == cap
    assert data.source_tokens(4 * web_chunks)["web"] == cap * data.raw_length
    capped_everywhere = mixture_config(tmp_path / "all", two_sources, tokenizer_dir, caps=(1, 1), max_steps=10_000)
    with pytest.raises(PtlabError, match="epochs_cap allow .* examples in all"):
        pretrain(load_config(capped_everywhere), show_progress=False)


def test_a_short_run_logs_the_tokens_of_each_source(tmp_path, two_sources, tokenizer_dir):
    config = mixture_config(tmp_path, two_sources, tokenizer_dir)
    cfg, data, origin = batches_of(config)
    result = pretrain(load_config(config), show_progress=False)
    records = read_metrics(result.run_dir)
    start = next(r for r in records if r.get("event") == "start")
    assert start["mixture"] == {"web": 0.7, "books": 0.3}
    logged = [r for r in records if "loss" in r and "event" not in r]
    assert len(logged) == 6
    for record in logged:  # cumulative chunk tokens per source, counted here from the chunks' content
        expected = {"web": 0, "books": 0}
        for example in range(record["step"] * cfg.train.batch_size):
            expected[next(iter(origin[data.sampler.chunk(example).tobytes()]))] += data.raw_length
        assert record["source_tokens"] == expected
    assert (tmp_path / "shards" / "web-train").is_dir() and (tmp_path / "shards" / "books-train").is_dir()


def curve(run_dir: Path) -> list[tuple]:
    return [(r["step"], r.get("loss"), r.get("val_loss"), json.dumps(r.get("source_tokens")))
            for r in read_metrics(run_dir) if "event" not in r]


def test_a_killed_mixture_run_resumes_to_identical_losses(tmp_path, two_sources, tokenizer_dir, kill_after):
    train = {"max_steps": 16, "checkpoint_every": 4, "eval_every": 4}
    reference = mixture_config(tmp_path / "a", two_sources, tokenizer_dir, **train)
    pretrain(load_config(reference), show_progress=False)
    expected = curve(tmp_path / "a" / "run")
    assert expected and all(json.loads(c[3]) for c in expected if c[1] is not None)

    config = mixture_config(tmp_path / "b", two_sources, tokenizer_dir, **train)
    run_dir = tmp_path / "b" / "run"
    assert kill_after(["-m", "ptlab", "pretrain", "--quiet", "--config", str(config)], run_dir, 9, timeout=120)
    steps = [c.name for c in list_checkpoints(run_dir)]
    assert steps and "step_0000016" not in steps  # killed mid-run, after at least one checkpoint
    resumed = pretrain(load_config(config), show_progress=False)
    assert resumed.resumed_from is not None and resumed.resumed_from < 16
    assert curve(run_dir) == expected

    changed = load_config(mixture_config(tmp_path / "b", two_sources, tokenizer_dir, weights=(0.5, 0.5), **train),
                          ["train.max_steps=20"])
    with pytest.raises(PtlabError, match="train_data changed"):  # the weights are part of the data identity
        pretrain(changed, show_progress=False)


def test_a_task_as_training_text_trains(tmp_path, two_sources, tokenizer_dir):
    config = mixture_config(tmp_path, two_sources, tokenizer_dir)
    cfg = load_config(config, ["data.mixture=[]", "data.train_files=[task:rt_polarity]", "train.max_steps=3"])
    result = pretrain(cfg, show_progress=False)
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert result.steps == 3 and len(losses) == 3 and np.isfinite(losses).all()
    written = list((tmp_path / "shards" / "tasks").glob("task-rt_polarity-*.jsonl"))
    assert len(written) == 1
    texts = [json.loads(line)["text"] for line in written[0].read_text(encoding="utf-8").splitlines()]
    name, inputs = task_input_texts("rt_polarity")
    assert texts == inputs and texts[0].startswith("sst2 sentence: ")
    assert not any(t.endswith((" positive", " negative")) for t in texts[:50])  # inputs only, no labels


def test_a_custom_task_definition_gives_its_inputs_and_its_own_fingerprint(tmp_path):
    write_jsonl(tmp_path / "train.jsonl.gz", [{"question": f"what is {i}?", "answer": str(i)} for i in range(5)])
    definition = tmp_path / "task.yaml"
    definition.write_text(yaml.safe_dump({"task": {"name": "numbers", "train": str(tmp_path / "train.jsonl.gz"),
                                                   "input_template": "q: {question}", "target_field": "answer",
                                                   "metrics": ["accuracy"]}}))
    name, texts = task_input_texts(str(definition))
    assert name == "numbers" and texts == [f"q: what is {i}?" for i in range(5)]
    from ptlab.data.mixture import materialise_tasks

    first = materialise_tasks([f"task:{definition}", "plain.jsonl"], tmp_path / "out")
    assert first[1] == "plain.jsonl" and Path(first[0]).is_file()
    write_jsonl(tmp_path / "train.jsonl.gz", [{"question": f"what is {i}?", "answer": str(i)} for i in range(6)])
    assert materialise_tasks([f"task:{definition}"], tmp_path / "out")[0] != first[0]  # new data, new shard input
    with pytest.raises(PtlabError, match="task:nonexistent: not a bundled task"):
        materialise_tasks(["task:nonexistent"], tmp_path / "out")


@pytest.mark.parametrize("overrides,message", [
    (["data.train_files=[a.jsonl]"], "config key 'data.mixture': and data.train_files are exclusive"),
    (["data.mixture=[{name: a, files: [x], weight: 1}, {name: a, files: [y], weight: 1}]"], "'a' is used twice"),
    (["data.mixture=[{name: a b, files: [x], weight: 1}]"], "config key 'data.mixture[0].name'"),
    (["data.mixture=[{name: a, files: [], weight: 1}]"], "config key 'data.mixture[0].files'"),
    (["data.mixture=[{name: a, files: [x], weight: -1}]"], "config key 'data.mixture[0].weight': must be positive"),
    (["data.mixture=[{name: a, files: [x], weight: 1, epochs_cap: 0}]"], "data.mixture[0].epochs_cap"),
    (["data.mixture=[{name: a, files: [x], wieght: 1}]"], "unknown config key 'data.mixture[0].wieght'"),
])
def test_mixture_config_mistakes_are_one_line_errors(tmp_path, two_sources, tokenizer_dir, overrides, message):
    config = mixture_config(tmp_path, two_sources, tokenizer_dir)
    with pytest.raises(PtlabError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        load_config(config, overrides)
    assert "\n" not in str(err.value)


def test_the_default_train_files_do_not_count_as_set(tmp_path):
    cfg = load_config(ROOT / "configs" / "demo.yaml",  # names the default corpus explicitly
                      ["data.mixture=[{name: corpus, files: [data/corpus/train.jsonl.gz], weight: 1}]"])
    assert cfg.data.train_files == [] and cfg.data.mixture[0].name == "corpus"


def test_the_mixture_study_sets_a_mixture_per_cell(tmp_path):
    study, base_dir = load_study(ROOT / "configs" / "study-mixture.yaml", [f"run_dir={tmp_path}"])
    plan = plan_study(study, base_dir)
    shares = [{s.name: s.weight for s in cfg.data.mixture} for _, cfg in plan.cells]
    assert len({json.dumps(s, sort_keys=True) for s in shares}) == len(shares) > 2  # one source's share varies
    assert len({cfg.data.shards_dir for _, cfg in plan.cells}) == 1  # the weights do not change the shards
    dry_run = format_plan(plan, estimate_seconds(plan))  # what `ptlab study --dry-run` prints
    assert "debian 10%" in dry_run and "debian 95%" in dry_run
    assert not tmp_path.joinpath("cells").exists()


def test_the_tokenizer_is_trained_on_text_from_every_source_by_weight(tmp_path):
    for name in ("web", "books"):  # many small documents, so that whole-document sampling can hit a byte budget
        write_jsonl(tmp_path / f"{name}.jsonl.gz", [{"text": f"{name} document {i} " + "words " * 15}
                                                    for i in range(2000)])
    mixture = [{"name": name, "files": [str(tmp_path / f"{name}.jsonl.gz")], "weight": weight}
               for name, weight in (("web", 0.25), ("books", 0.75))]
    cfg = load_config(None, [f"data.mixture={json.dumps(mixture)}", "data.tokenizer_sample_bytes=40000",
                             f"data.tokenizer={tmp_path / 'tokenizer'}"])
    sampled = {"web": 0, "books": 0}
    for text in tokenizer_texts(cfg.data):
        sampled[text.split()[0]] += len(text.encode("utf-8"))
    # each source's byte budget, to within the sampler's whole-document stride (ceil(total / budget) undershoots)
    assert 0.85 * 10_000 < sampled["web"] <= 10_000 and 0.85 * 30_000 < sampled["books"] <= 30_000
    assert sampled["web"] / sum(sampled.values()) == pytest.approx(0.25, abs=0.03)
