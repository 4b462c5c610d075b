"""lm-evaluation-harness on a ptlab checkpoint (`ptlab evaluate --harness`): offline, on the shipped local task, it
scores every example as `ptlab evaluate --shots 0` does."""

import json

import numpy as np
import pytest
import torch

from ptlab.config import Config, ModelConfig, TaskConfig
from ptlab.data.tasks import resolve_task
from ptlab.downstream.harness import (
    HARNESS_TASKS_DIR,
    harness_task_yaml,
    jinja_template,
)
from ptlab.downstream.incontext import prompted_examples, score_prompted
from ptlab.models import build_model
from ptlab.train.checkpoint import write_checkpoint

EXAMPLES = 40


def test_the_shipped_task_is_the_one_rt_polarity_prompts_with():
    task = resolve_task(TaskConfig(name="rt_polarity"))
    shipped = (HARNESS_TASKS_DIR / "ptlab_rt_polarity.yaml").read_text(encoding="utf-8")
    assert shipped == harness_task_yaml(task, "test", "data/tasks/rt_polarity/test.jsonl.gz")
    jinja2 = pytest.importorskip("jinja2")
    for template in ("Review: {text}\nSentiment:", "a {x} {{literal}} {{%b%}} {{{x}}}"):
        assert jinja2.Template(jinja_template(template)).render(text="t", x="v") == template.format(text="t", x="v")


def harness_log_likelihoods(path) -> np.ndarray:
    samples = json.loads(path.read_text())["samples"]["ptlab_rt_polarity"]
    assert [s["doc_id"] for s in samples] == list(range(EXAMPLES))
    return np.array([[float(r[0]) for r in s["filtered_resps"]] for s in samples]), samples


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_the_harness_and_ptlab_score_the_same_zero_shot_examples_alike(tmp_path, bpe_tokenizer, monkeypatch, family):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'ptlab[harness]')")
    from ptlab.downstream.harness import run_harness

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):  # restored after the test
        monkeypatch.setenv(key, "1")
    torch.manual_seed(0)
    tokenizer = bpe_tokenizer
    cfg = ModelConfig(family=family, vocab_size=tokenizer.vocab_size, d_model=32, d_ff=64, num_heads=2, num_layers=1,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, max_position_embeddings=256,
                      initializer_factor=5.0)
    model = build_model(cfg).eval()
    checkpoint = write_checkpoint(tmp_path / "ckpt", model, Config(run_dir=str(tmp_path), model=cfg), tokenizer)
    results = run_harness(checkpoint, "ptlab_rt_polarity", limit=EXAMPLES, output=tmp_path / "harness.json")
    harness, samples = harness_log_likelihoods(tmp_path / "harness.json")
    task = resolve_task(TaskConfig(name="rt_polarity", max_eval_examples=EXAMPLES))
    scores, rows = score_prompted(model, tokenizer, task, "test", shots=0, budget=256)
    assert [s["arguments"][0][0] for s in samples] == [r["prompt"] for r in rows]  # the same prompt text
    if family == "gpt2":
        # the oracle behind the accuracies: each example's log-likelihood of each label, as the harness logged it
        ptlab = np.array([[r["log_likelihoods"][label] for label in task.labels] for r in rows])
        np.testing.assert_allclose(harness, ptlab, rtol=1e-4, atol=1e-4)
        assert results["ptlab_rt_polarity"]["acc"] * 100 == pytest.approx(scores["accuracy"], abs=1e-6)
    else:  # the harness's encoder reads the prompt without ptlab's closing EOS: the same model scored by hand so
        prompted = prompted_examples(task, tokenizer, "test", 0, seed=0, budget=256, encoder_decoder=True)
        with torch.no_grad():
            by_hand = np.array([[model(torch.tensor([p.context]), torch.tensor([[0, *a[:-1]]]))[0].log_softmax(-1)
                                 .gather(1, torch.tensor(a)[:, None]).sum().item() for a in p.answers]
                                for p in prompted])
        np.testing.assert_allclose(harness, by_hand, rtol=1e-4, atol=1e-4)  # its untied head kept (T5 v1.1)
