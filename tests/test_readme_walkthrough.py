"""The README's "Your own data" commands run as written on a folder of Parquet files (shrunk: a smaller vocabulary,
a smaller model, a few steps), and transformers loads the exported model with ptlab's logits."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
SHRINK = {"--vocab-size 8192": "--vocab-size 600"}
SMALL = ["model.d_model=32", "model.d_ff=64", "model.num_heads=2", "model.num_layers=1", "train.max_steps=3",
         "train.batch_size=4", "objective.inputs_length=32", "train.eval_every=0", "train.tensorboard=false"]


def readme_commands() -> list[list[str]]:
    """The `sh` block under "## Your own data", one argv per command (continuation lines joined, comments cut)."""
    section = ROOT.joinpath("README.md").read_text(encoding="utf-8").split("## Your own data", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    text = block.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.split("  #", 1)[0].strip()
        for old, new in SHRINK.items():
            line = line.replace(old, new)
        if line:
            commands.append(shlex.split(line))
    return commands


def test_your_own_data_from_a_parquet_folder_to_an_exported_model(tmp_path, sample_docs):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):  # documents spread over files and row groups, as a crawl's shards are
        part = sample_docs[i::3]
        pq.write_table(pa.table({"text": [d["text"] for d in part], "id": [d["id"] for d in part]}),
                       corpus / f"part-{i:05d}.parquet", row_group_size=25)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["ptlab", "tokenizer"], ["ptlab", "tokenize"], ["ptlab", "pretrain"],
                                         ["ptlab", "export-hf"]]
    for command in commands:
        extra = SMALL if command[1] == "pretrain" else []
        run = subprocess.run([sys.executable, "-m", "ptlab", *command[1:], *extra], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{command}: {run.stderr[-2000:]}"

    import transformers

    from ptlab.train.checkpoint import load_model

    ours = load_model(tmp_path / "runs" / "mine").eval()
    theirs = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "runs" / "mine-hf").eval()
    inputs, decoder = torch.randint(3, 500, (2, 12)), torch.randint(3, 500, (2, 5))
    with torch.no_grad():
        expected = ours(inputs, decoder)
        got = theirs(input_ids=inputs, decoder_input_ids=decoder).logits
    assert (expected - got).abs().max() < 1e-4
