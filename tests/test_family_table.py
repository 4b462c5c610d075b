"""The family table (`ptlab.families`) is the one place that says what a model family is: a fifth family, defined
here by one table entry and one model class, builds from a config, trains a step, counts its FLOPs, generates and
sizes itself with no other file touched; and outside the table and the model registry no module tests a family by
its name."""

import ast
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ptlab.config import ModelConfig, load_config
from ptlab.errors import PtlabError
from ptlab.families import FAMILIES, FamilySpec, families_where, register_family, unregister_family
from ptlab.models import DecoderOnlyModel, build_model, count_parameters
from ptlab.models.decoder import Block, make_norm
from ptlab.models.flops import forward_flops
from ptlab.models.generate import generate
from ptlab.models.head_loss import OutputHead
from ptlab.models.layers import KVCache, init_gpt_style
from ptlab.models.masks import decoder_bias
from ptlab.models.size import check_fits_weights, minimum_parameters
from ptlab.train.loop import pretrain
from ptlab.train.runlog import read_metrics

SRC = Path(__file__).resolve().parents[1] / "src" / "ptlab"
BUILT_IN = ("t5", "bart", "gpt2", "llama")


class ToyLM(nn.Module):
    """A decoder-only mix no built-in family is: learned positions (GPT-2's), with RMSNorm, SwiGLU and no biases
    (Llama's), from the blocks the table's entry configures, with a tied head."""

    is_encoder_decoder = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positions = nn.Embedding(cfg.max_position_embeddings, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = make_norm(cfg)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_gpt_style(self, 0.02)

    def new_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]

    def output_head(self) -> OutputHead:
        return OutputHead(self.embed.weight)

    def hidden_states(self, input_ids, position_ids=None, segment_ids=None, prefix_mask=None, attention_mask=None,
                      cache=None, past_length=0):
        batch, length = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + length, device=input_ids.device)[None].expand(
                batch, length)
        mask = decoder_bias(length, past_length + length, input_ids.device, segment_ids=segment_ids,
                            attention_mask=attention_mask)
        x = self.embed(input_ids) + self.positions(position_ids)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, None, cache[i] if cache is not None else None)
        return self.norm(x)

    def forward(self, input_ids, position_ids=None, segment_ids=None, prefix_mask=None, attention_mask=None,
                cache=None, past_length=0, return_hidden=False):
        x = self.hidden_states(input_ids, position_ids, segment_ids, prefix_mask, attention_mask, cache, past_length)
        return x if return_hidden else self.output_head().logits(x)


TOY = FamilySpec("toy", ToyLM, encoder_decoder=False, positions="learned", feed_forward="swiglu", norm="rms",
                 bias=False, tie_word_embeddings=True, layer_norm_eps=1e-6)


@pytest.fixture
def toy():
    register_family(TOY)
    yield TOY
    unregister_family(TOY.name)


def toy_config(tmp_path, small_corpus, tokenizer_dir):
    return load_config("configs/llama-tiny.yaml", [
        "model.family=toy", f"run_dir={tmp_path / 'run'}", f"data.train_files=[{small_corpus['train']}]",
        "data.validation_files=[]", f"data.tokenizer={tokenizer_dir}", "data.tokenizer_kind=unigram",
        "data.vocab_size=2000", f"data.shards_dir={tmp_path / 'shards'}", "model.d_model=32", "model.d_ff=64",
        "model.num_heads=4", "model.num_kv_heads=4", "model.num_layers=2", "model.max_position_embeddings=64",
        "objective.inputs_length=32", "train.batch_size=4", "train.max_steps=1", "train.warmup_steps=0",
        "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0", "train.threads=1",
        "train.precision=fp32", "train.tensorboard=false", "train.peak_tflops=1.0"])


def test_a_toy_family_builds_trains_counts_its_flops_generates_and_sizes_itself(tmp_path, small_corpus,
                                                                                tokenizer_dir, toy):
    cfg = toy_config(tmp_path, small_corpus, tokenizer_dir)
    assert cfg.model.tie_word_embeddings is True and cfg.model.layer_norm_eps == 1e-6  # the entry's defaults
    result = pretrain(cfg, show_progress=False)
    losses = [r["loss"] for r in read_metrics(result.run_dir) if "loss" in r and "event" not in r]
    assert result.steps == 1 and len(losses) == 1 and math.isfinite(losses[0])

    model_cfg = cfg.model  # the vocabulary and special ids filled in from the tokenizer by the run
    model = build_model(model_cfg)
    assert isinstance(model, ToyLM) and isinstance(model, DecoderOnlyModel)
    assert result.parameters == count_parameters(model)

    # FLOPs: 2 per weight of every block matrix (SwiGLU's three included) and the head, plus attention's products
    length, layers = 32, model_cfg.num_layers
    block_weights = sum(m.weight.numel() for m in model.blocks.modules() if isinstance(m, nn.Linear))
    attention = 4 * length * model_cfg.num_heads * model_cfg.d_kv
    expected = length * (2 * block_weights + layers * attention + 2 * model_cfg.d_model * model_cfg.vocab_size)
    assert forward_flops(model_cfg, 0, length) == expected

    # generation: greedy with and without the cache agree, and stop at the learned positions' end
    prompt = torch.randint(5, model_cfg.vocab_size, (2, 6))
    cached = generate(model, prompt, max_new_tokens=5, eos_token_id=-1)
    uncached = generate(model, prompt, max_new_tokens=5, eos_token_id=-1, use_cache=False)
    assert cached.shape == (2, 5) and torch.equal(cached, uncached)
    with pytest.raises(PtlabError, match="model.max_position_embeddings"):
        generate(model, torch.randint(5, model_cfg.vocab_size, (1, 64)), max_new_tokens=2, eos_token_id=-1)

    # size: a lower bound on the parameters, which refuses weight files too small for the config
    assert minimum_parameters(model_cfg) <= count_parameters(model)
    with pytest.raises(PtlabError, match="does not belong"):
        check_fits_weights(model_cfg, 100, "toy weights")


def test_the_table_feeds_the_config_checks(toy):
    assert families_where(encoder_decoder=False) == ["gpt2", "llama", "toy"]
    with pytest.raises(PtlabError, match=r"decoder-only families \(gpt2, llama, toy\)"):
        ModelConfig(family="t5", prefix_lm=True).validate()
    with pytest.raises(PtlabError, match="grouped-query attention is a llama option"):
        ModelConfig(family="toy", num_kv_heads=2).validate()
    with pytest.raises(PtlabError, match="already registered"):
        register_family(TOY)


def test_an_unknown_family_is_one_line_naming_the_known_ones():
    assert "toy" not in FAMILIES  # the fixture removed it
    with pytest.raises(PtlabError) as err:
        ModelConfig(family="toy").validate()
    assert str(err.value) == "config key 'model.family': unknown family 'toy' (known: t5, bart, gpt2, llama)"


def family_name_tests(tree: ast.AST) -> list[int]:
    """Lines that compare a value with a built-in family's name, or hold a table keyed by family names."""
    def names(node):
        elements = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return [e for e in elements if isinstance(e, ast.Constant) and e.value in BUILT_IN]

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(names(side) for side in [node.left, *node.comparators]):
            lines.append(node.lineno)
        elif isinstance(node, ast.Dict) and sum(1 for key in node.keys if key is not None and names(key)) > 1:
            lines.append(node.lineno)
    return lines


def test_only_the_table_and_the_model_registry_know_family_names():
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        lines = family_name_tests(ast.parse(path.read_text(encoding="utf-8")))
        if lines:
            found[str(path.relative_to(SRC))] = lines
    assert set(found) <= {"families.py", "models/__init__.py"}, found
