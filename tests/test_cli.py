import subprocess
import sys

import pytest

from ptlab.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ptlab", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [[], ["demo"], ["pretrain"], ["tokenizer"], ["tokenizer", "train"], ["tokenize"]])
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
