import pytest

from ptlab.config import load_config
from ptlab.errors import PtlabError


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: runs/x\nmodel:\n  d_model: 128\ntrain:\n  max_steps: 10\n  lr: 1e-3\n")
    cfg = load_config(path, ["train.max_steps=200", "model.num_layers=2", "data.train_files=[a.jsonl,b.jsonl]"])
    assert cfg.model.d_model == 128 and cfg.model.num_layers == 2
    assert cfg.train.max_steps == 200 and cfg.train.lr == 1e-3
    assert cfg.data.train_files == ["a.jsonl", "b.jsonl"]
    assert cfg.run_dir == "runs/x" and cfg.seed == 0


def test_shipped_configs_load():
    from pathlib import Path

    from ptlab.config import FinetuneConfig
    from ptlab.lab.scaling.ladder import load_ladder, plan_ladder

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        if path.name.startswith("study"):
            continue  # study grids: tests/test_study.py
        if path.name.startswith("scaling"):  # ladders: every point's run config is built and checked
            ladder, base_dir = load_ladder(path)
            assert plan_ladder(ladder, base_dir)
            continue
        load_config(path, cls=FinetuneConfig if path.name.startswith("finetune") else None)


def test_compile_takes_true_false_or_auto():
    assert load_config(None, ["train.compile=true"]).train.compile is True
    assert load_config(None).train.compile == "auto"
    with pytest.raises(PtlabError, match="train.compile"):
        load_config(None, ["train.compile=sometimes"])


@pytest.mark.parametrize("override,message", [
    ("model.dmodel=3", "unknown config key 'model.dmodel'; did you mean 'model.d_model'?"),
    ("trian.max_steps=3", "unknown config key 'trian'; did you mean 'train'?"),
    ("train.max_steps=abc", "config key 'train.max_steps': expected an integer, got 'abc'"),
    ("train.batch_size=0", "config key 'train.batch_size': must be positive"),
    ("objective.noise_density=1.5", "config key 'objective.noise_density'"),
    ("model.tie_word_embeddings=maybe", "config key 'model.tie_word_embeddings': expected true or false"),
    ("train.schedule=wavy", "config key 'train.schedule': unknown schedule 'wavy'"),
    ("nonsense", "must look like section.key=value"),
])
def test_bad_keys_and_values_are_one_line_errors(override, message):
    with pytest.raises(PtlabError) as err:
        load_config(None, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_steps: 3\n  lr: [1\n")
    with pytest.raises(PtlabError, match="bad.yaml line"):
        load_config(path)


def test_missing_file():
    with pytest.raises(PtlabError, match="config file not found"):
        load_config("does/not/exist.yaml")
