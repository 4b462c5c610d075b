"""EleutherAI's lm-evaluation-harness on a ptlab checkpoint: exported for transformers (`export_hf`), loaded by the
harness's own HF model class, run offline on local task definitions.

    results = run_harness("runs/gpt2", "ptlab_rt_polarity", limit=200)   # needs the [harness] extra (lm-eval)

Task names are the harness's, or YAML files; the tasks shipped in `harness_tasks/` are built from ptlab's bundled
tasks with the same prompt and verbalizer as `ptlab evaluate --shots 0` (`harness_task_config` writes them), so the
two score a model alike. Their `data_files` are relative to the repository root and resolved here; every dataset is
read from local files and cached in a scratch folder, with the Hugging Face hub switched off.
"""

from __future__ import annotations

import os
import string
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from ptlab.config import ModelConfig
from ptlab.data.tasks import TASKS_DIR, Task
from ptlab.errors import PtlabError
from ptlab.files import json_text, prepare_output, write_text_atomic
from ptlab.train.checkpoint import load_checkpoint_config
from ptlab.train.interop import export_hf

HARNESS_TASKS_DIR = Path(__file__).resolve().parent / "harness_tasks"
ROOT = TASKS_DIR.parents[1]  # where the shipped tasks' relative data_files start


def jinja_template(template: str) -> str:
    """A task template ("Review: {text}") as the harness's Jinja ("Review: {{text}}"); literal text holding a
    brace is kept raw."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append("{% raw %}" + literal + "{% endraw %}" if set(literal) & set("{}%#") else literal)
        if name is not None:
            parts.append("{{" + name + "}}")
    return "".join(parts)


def harness_task_config(task: Task, split: str, data_file: str) -> dict:
    """A harness multiple-choice task from a ptlab classification task: its prompt, each label's verbalizer words
    as the choices (appended with no extra delimiter: the words carry their own space), accuracy summed (acc) and
    normalised by length (acc_norm, per byte in the harness)."""
    if not task.is_classification:
        raise PtlabError(f"task {task.name}: only classification tasks become harness tasks")
    labels = task.labels
    return {"task": f"ptlab_{task.name}",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {split: data_file}},
            "test_split": split,
            "output_type": "multiple_choice",
            "doc_to_text": jinja_template(task.prompt or task.input_template),
            "doc_to_choice": [task.verbalizer[label] for label in labels],
            "doc_to_target": "{{" + repr(labels) + f".index({task.target_field})" + "}}",
            "target_delimiter": "",
            "fewshot_delimiter": "\n\n",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0}}


class _QuotedDumper(yaml.SafeDumper):
    """Strings with a line break or an edge space in double quotes, so that a task file reads like its prompt."""


_QuotedDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style='"' if "\n" in text or text != text.strip() else None))


def harness_task_yaml(task: Task, split: str, data_file: str) -> str:
    """The text of the task file `harness_task_config` describes (the shipped ones are written by this)."""
    header = (f"# lm-evaluation-harness task from ptlab's bundled {task.name} ({split} split) with the prompt and "
              "verbalizer of\n# `ptlab evaluate --shots 0`; written by ptlab.downstream.harness.harness_task_yaml. "
              "`ptlab evaluate\n# --harness` resolves data_files from the repository root.\n")
    return header + yaml.dump(harness_task_config(task, split, data_file), Dumper=_QuotedDumper, sort_keys=False,
                              allow_unicode=True, width=120)


def _local_task_files(names: list[str], scratch: Path) -> tuple[list[str], Path]:
    """(harness task names, a folder of their YAML files) with data_files made absolute and the dataset cache in
    `scratch`; a name that is neither shipped nor a YAML file is passed to the harness as it is."""
    folder = scratch / "tasks"
    folder.mkdir()
    out = []
    for name in names:
        path = Path(name) if name.endswith((".yaml", ".yml")) else HARNESS_TASKS_DIR / f"{name}.yaml"
        if not path.is_file():
            if name.endswith((".yaml", ".yml")):
                raise PtlabError(f"harness task file not found: {name}")
            out.append(name)
            continue
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise PtlabError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(config, dict) or "task" not in config:
            raise PtlabError(f"{path}: a harness task needs a mapping with a 'task' key")
        kwargs = config.setdefault("dataset_kwargs", {})
        files = kwargs.get("data_files") or {}
        kwargs["data_files"] = {split: str(ROOT / file) if not Path(file).is_absolute() else file
                                for split, file in files.items()}
        kwargs["cache_dir"] = str(scratch / "datasets")
        (folder / path.name).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        out.append(str(config["task"]))
    return out, folder


def _offline() -> None:
    """No network: the hub and `datasets` read only local files (the libraries read these when first imported)."""
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[key] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if "datasets" in sys.modules:  # imported before: switch its copy of the flag too
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True


def _harness_model(hf_dir: Path, model_cfg: ModelConfig, batch_size: int):
    """The harness's HF model on the export, loaded as the export's note for an untied T5 says (HFLM calls
    `tie_weights()`, which transformers 5 would otherwise let tie the head to the embedding)."""
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    loader = AutoModelForSeq2SeqLM if model_cfg.is_encoder_decoder else AutoModelForCausalLM
    model = loader.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    model.config.tie_word_embeddings = model_cfg.tie_word_embeddings
    return HFLM(pretrained=model, tokenizer=str(hf_dir), backend="seq2seq" if model_cfg.is_encoder_decoder
                else "causal", batch_size=batch_size)


def run_harness(checkpoint: str | Path, tasks: str, limit: int | None = None, num_fewshot: int = 0,
                batch_size: int = 16, output: str | Path | None = None) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of lm-evaluation-harness on the checkpoint (accuracies as fractions, as the harness
    reports them); the harness's full results JSON, with every example's log-likelihoods ("samples"), is written
    atomically to `output` when given."""
    if output is not None:
        prepare_output(output, "--scores")
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise PtlabError("--harness: name at least one task (e.g. ptlab_rt_polarity)")
    _offline()
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise PtlabError(f"--harness needs lm-evaluation-harness: pip install 'ptlab[harness]' ({err})") from None
    model_cfg = load_checkpoint_config(checkpoint).model
    with tempfile.TemporaryDirectory(prefix="ptlab-harness-") as scratch:
        scratch = Path(scratch)
        hf_dir, _ = export_hf(checkpoint, scratch / "hf")
        task_names, folder = _local_task_files(names, scratch)
        model = _harness_model(hf_dir, model_cfg, batch_size)
        # the harness's own tasks are indexed (seconds) only when asked for; their data must be in the local cache
        local = {p.stem for p in folder.glob("*.yaml")} | {str(yaml.safe_load(p.read_text())["task"])
                                                             for p in folder.glob("*.yaml")}
        manager = TaskManager(include_path=str(folder), include_defaults=not set(task_names) <= local)
        unknown = [n for n in task_names if n not in manager.all_tasks]
        if unknown:
            raise PtlabError(f"--harness: unknown task {', '.join(unknown)}; shipped: "
                             f"{', '.join(p.stem for p in sorted(HARNESS_TASKS_DIR.glob('*.yaml')))} (or a YAML file)")
        results = simple_evaluate(model=model, tasks=task_names, task_manager=manager, num_fewshot=num_fewshot,
                                  limit=limit, log_samples=output is not None, bootstrap_iters=0)
    if output is not None:
        write_text_atomic(output, json_text(results, indent=2, default=str) + "\n")
    return {name: {k.split(",")[0]: v for k, v in scores.items() if isinstance(v, (int, float)) and "stderr" not in k}
            for name, scores in results["results"].items()}


def print_harness(results: dict[str, dict[str, float]], out=sys.stdout) -> None:
    for name, scores in results.items():
        examples = f" ({scores['sample_len']:.0f} examples)" if "sample_len" in scores else ""
        print(f"lm-evaluation-harness {name}{examples}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in scores.items() if k != "sample_len"), file=out)
