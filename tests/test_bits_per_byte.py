"""Bits per byte against oracles computed from the text itself: every id's byte count against an independent reading
of its piece (GPT-2's byte table, byte pieces, "▁"), whose concatenation over a text's ids must give back the text's
UTF-8 bytes; a uniform model's bpb is log2(V) x tokens / bytes; a model whose likelihood is a known product over the
text's bytes gets that likelihood's bits per byte through a 1k and an 8k tokenizer alike; and a real run's
metrics.jsonl holds val_bpb with val_bpb x ln 2 x bytes = val_loss x tokens on its own validation targets."""

import gzip
import itertools
import json
import math
import re

import numpy as np
import pytest
import torch
from test_trainer import write_config
from torch import nn

from ptlab.config import ModelConfig, load_config
from ptlab.data import ensure_shards, ensure_tokenizer
from ptlab.data.pipeline import (
    IGNORE_INDEX,
    encoder_decoder_batch,
    pretrain_batches,
    resolve_objective,
    validation_batches,
)
from ptlab.data.tokenizer import train_tokenizer
from ptlab.downstream.evaluate import target_bits_per_byte
from ptlab.models import build_model
from ptlab.models.head_loss import OutputHead
from ptlab.objectives import Example
from ptlab.train.batches import model_inputs, to_tensors
from ptlab.train.loop import evaluate, pretrain
from ptlab.train.runlog import read_metrics

from conftest import CORPUS

TEXTS = ["Hello world", " a leading space", "two  spaces\tand a tab\nand lines\n\n", "naïve café — 日本語 🙂 Ünïcödé",
         "▁ the marker and <0x41>, a byte piece's spelling", "x", "   ", "The year 1984; $3.50 (approx.) #hash @at"]


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode table, inverted: the character each byte is written as in a byte-level piece."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


BYTE_DECODER = _gpt2_byte_decoder()


def special_ids(tokenizer) -> set[int]:
    s = tokenizer.specials
    return {s.pad, s.eos, s.unk, s.mask, *s.sentinels, *(i for ids in s.modes.values() for i in ids)} - {None}


def piece_bytes(tokenizer, i: int) -> bytes:
    """The bytes id `i` stands for, read from its piece independently of ptlab's `token_bytes`."""
    if i in special_ids(tokenizer):
        return b""
    piece = tokenizer.id_to_token(i)
    if tokenizer.kind == "bpe":
        return bytes(BYTE_DECODER[c] for c in piece)
    if re.fullmatch("<0x[0-9A-F]{2}>", piece):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


@pytest.fixture(params=["bpe", "unigram"])
def tokenizer(request, bpe_tokenizer, unigram_tokenizer):
    return {"bpe": bpe_tokenizer, "unigram": unigram_tokenizer}[request.param]


def test_every_id_counts_the_bytes_it_decodes_to_and_a_text_sums_to_its_length(tokenizer):
    counts = tokenizer.token_bytes
    assert counts.shape == (tokenizer.vocab_size,) and counts.dtype == np.int64
    assert [int(counts[i]) for i in range(tokenizer.vocab_size)] == [
        len(piece_bytes(tokenizer, i)) for i in range(tokenizer.vocab_size)]
    assert not counts[sorted(special_ids(tokenizer))].any()  # EOS, pad, unk, <mask>, mode tokens, sentinels
    assert counts.max() > 3  # merged pieces, not just bytes
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert b"".join(piece_bytes(tokenizer, i) for i in ids) == text.encode("utf-8"), text  # the oracle holds
        assert counts[ids].sum() == len(text.encode("utf-8")), text  # no leading-space artefact either


def _eval_batch(tokenizer, texts: list[str]) -> tuple[dict[str, torch.Tensor], int, int]:
    """An encoder-decoder batch whose targets are <extra_id_0> text </s> per text (rows padded), with the target
    token and byte counts."""
    sentinel, eos, pad = tokenizer.specials.sentinels[0], tokenizer.specials.eos, tokenizer.specials.pad
    examples = [Example(np.array(tokenizer.encode("summarize: " + t[:5]) + [eos]),
                        np.array([sentinel, *tokenizer.encode(t), eos])) for t in texts]
    batch = encoder_decoder_batch(examples, 0, 0, pad, pad)
    assert (batch["labels"] == IGNORE_INDEX).any()  # padded rows: the padding counts neither tokens nor bytes
    tokens = sum(len(e.targets) for e in examples)
    return to_tensors(model_inputs(batch)), tokens, sum(len(t.encode("utf-8")) for t in texts)


def test_a_uniform_model_scores_log2_v_bits_per_token_spread_over_the_bytes(tokenizer):
    model = build_model(ModelConfig(family="t5", vocab_size=tokenizer.vocab_size, d_model=16, d_ff=32, num_heads=2,
                                    num_layers=1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    for p in model.parameters():
        nn.init.zeros_(p)  # every logit 0: each of the V ids has probability 1/V
    batches = [_eval_batch(tokenizer, TEXTS[:4]), _eval_batch(tokenizer, TEXTS[4:])]
    tokens, num_bytes = sum(b[1] for b in batches), sum(b[2] for b in batches)
    result = evaluate(model, [b[0] for b in batches], "fp32", token_bytes=tokenizer.token_bytes)
    assert (result.tokens, result.bytes) == (tokens, num_bytes)
    assert result.loss == pytest.approx(math.log(tokenizer.vocab_size), rel=1e-6)
    expected = math.log2(tokenizer.vocab_size) * tokens / num_bytes
    assert result.bpb == pytest.approx(expected, rel=1e-6)
    assert evaluate(model, [b[0] for b in batches], "fp32").bpb is None  # no byte counts, no bpb
    # `ptlab evaluate`'s target_bpb: the same targets, scored the same way
    sentinel, eos = tokenizer.specials.sentinels[0], tokenizer.specials.eos
    examples = [Example(np.array(tokenizer.encode("summarize: " + t[:5]) + [eos]),
                        np.array([sentinel, *tokenizer.encode(t), eos])) for t in TEXTS]
    assert target_bits_per_byte(model, tokenizer, examples, batch_size=3) == pytest.approx(expected, rel=1e-6)


class KnownByteModel(nn.Module):
    """A scorer whose likelihood of a text is known per byte: p(token) = product of q(b) over the token's bytes
    (1 for a special token), the rest of the probability spread evenly over the other ids. It reads the label it
    scores from `input_ids` (the batch puts the labels there): its logits are set, not learned."""

    is_encoder_decoder = True

    def __init__(self, log_p: torch.Tensor):
        super().__init__()
        self.log_p = log_p

    def forward(self, input_ids, decoder_input_ids, attention_mask=None, return_hidden=False):
        assert return_hidden
        return input_ids.unsqueeze(-1).float()  # the "hidden state": the label id

    def output_head(self):
        return _KnownHead(self.log_p)


class _KnownHead(OutputHead):
    def __init__(self, log_p: torch.Tensor):
        super().__init__(torch.zeros(len(log_p), 1))
        self.log_p = log_p.double()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        ids = hidden[:, 0].long()
        picked = self.log_p[ids]
        rest = torch.log(-torch.expm1(picked).clamp(max=-1e-30)) - math.log(len(self.log_p) - 1)
        logits = rest[:, None].repeat(1, len(self.log_p))
        return logits.scatter(1, ids[:, None], picked[:, None])


@pytest.fixture(scope="module")
def corpus_texts() -> list[str]:
    """Every 7th of the bundled training split's first 2,800 documents, cut to 2,000 characters."""
    with gzip.open(CORPUS / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in itertools.islice(f, 2800)]
    return [d[:2000] for d in docs[::7]]


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_a_1k_and_an_8k_tokenizer_give_the_known_bits_per_byte(kind, corpus_texts, sample_docs):
    text = "\n\n".join(d["text"][:600] for d in sample_docs[::40]) + "\n" + TEXTS[3]  # held out, with non-ASCII
    data = text.encode("utf-8")
    q = np.array([1.0 + (b % 11) + 5 * (b == 32) for b in range(256)])  # a known, uneven distribution of bytes
    log_q = np.log(q / q.sum())
    oracle = -sum(log_q[b] for b in data) / (math.log(2) * len(data))
    figures = {}
    for vocab_size in (1024, 8192):
        tokenizer = train_tokenizer(corpus_texts, kind, vocab_size, 10, show_progress=False)
        assert tokenizer.vocab_size == vocab_size
        log_p = torch.tensor([sum(log_q[b] for b in piece_bytes(tokenizer, i)) for i in range(vocab_size)])
        ids = tokenizer.encode(text)
        chunks = [ids[i:i + 97] for i in range(0, len(ids), 97)]  # rows of targets, each ended by EOS
        eos = tokenizer.specials.eos
        batches = []
        for start in range(0, len(chunks), 4):
            rows = [np.array(c + [eos]) for c in chunks[start:start + 4]]
            batch = encoder_decoder_batch([Example(r, r) for r in rows], 0, 0, 0, 0)
            batches.append(to_tensors({"input_ids": np.where(batch["labels"] == IGNORE_INDEX, 0, batch["labels"]),
                                       "decoder_input_ids": batch["decoder_input_ids"], "labels": batch["labels"]}))
        result = evaluate(KnownByteModel(log_p), batches, "fp32", token_bytes=tokenizer.token_bytes)
        assert result.bytes == len(data) and result.tokens == len(ids) + len(chunks)
        figures[vocab_size] = (result.bpb, len(ids))
    assert figures[1024][1] > 1.2 * figures[8192][1]  # the 8k tokenizer does cut the text into fewer tokens
    assert figures[1024][0] == pytest.approx(oracle, rel=1e-6)
    assert figures[8192][0] == pytest.approx(oracle, rel=1e-6)


def test_a_training_run_records_val_bpb_consistent_with_val_loss(tmp_path, small_corpus, tokenizer_dir):
    config = write_config(tmp_path, small_corpus, tokenizer_dir)
    cfg = load_config(config, ["train.max_steps=4", "train.eval_every=2", "train.checkpoint_every=0"])
    result = pretrain(cfg, show_progress=False)
    # the run's validation targets, rebuilt here, their bytes read from the pieces (not from token_bytes)
    cfg = load_config(config, ["train.max_steps=4"])
    tokenizer = ensure_tokenizer(cfg.data, False)
    _, val_shard = ensure_shards(cfg.data, tokenizer, False)
    objective = resolve_objective(cfg.objective)
    labels = np.concatenate([b["labels"].reshape(-1) for b in validation_batches(
        pretrain_batches(cfg, objective, val_shard, tokenizer.specials, validation=True), cfg)])
    labels = labels[labels != IGNORE_INDEX]
    assert np.isin(labels, tokenizer.specials.sentinels).any()  # span corruption: sentinels among the targets
    num_bytes = sum(len(piece_bytes(tokenizer, int(i))) for i in labels)
    evaluations = [r for r in read_metrics(cfg.run_dir) if "val_loss" in r]
    assert [r["step"] for r in evaluations] == [0, 2, 4, 4]  # step 0, every 2 steps, the end event
    for record in evaluations:
        assert record["val_bpb"] * math.log(2) * num_bytes == pytest.approx(record["val_loss"] * len(labels),
                                                                           rel=1e-9)
    assert (result.initial_val_bpb, result.final_val_bpb) == (evaluations[0]["val_bpb"], evaluations[-1]["val_bpb"])
    assert result.final_val_bpb < result.initial_val_bpb
