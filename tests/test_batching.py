import numpy as np
import pytest

from ptlab.config import load_config
from ptlab.data.pipeline import IGNORE_INDEX, PretrainBatches, decoder_batch, encoder_decoder_batch, resolve_objective
from ptlab.data.shards import build_shard
from ptlab.errors import PtlabError
from ptlab.objectives import Example


def ex(inputs, targets):
    return Example(np.array(inputs, dtype=np.int64), np.array(targets, dtype=np.int64))


def test_encoder_decoder_batch_shifts_targets_right_from_the_start_token():
    batch = encoder_decoder_batch([ex([5, 6, 1], [7, 8, 9, 1]), ex([5, 1], [7, 1])], 4, 5, pad_id=0,
                                  decoder_start_id=2)
    np.testing.assert_array_equal(batch["input_ids"], [[5, 6, 1, 0], [5, 1, 0, 0]])
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1, 0], [1, 1, 0, 0]])
    np.testing.assert_array_equal(batch["labels"], [[7, 8, 9, 1, -100], [7, 1, -100, -100, -100]])
    np.testing.assert_array_equal(batch["decoder_input_ids"], [[2, 7, 8, 9, 1], [2, 7, 1, 0, 0]])


def test_longer_examples_widen_the_batch_instead_of_being_cut():
    batch = encoder_decoder_batch([ex([5, 6, 7, 8, 9, 1], [1])], 4, 2, pad_id=0, decoder_start_id=0)
    assert batch["input_ids"].shape == (1, 6) and batch["labels"].shape == (1, 2)


def test_decoder_batch_puts_loss_on_targets_only():
    batch = decoder_batch([ex([5, 6, 7], [8, 9, 1])], 6, pad_id=0)
    np.testing.assert_array_equal(batch["input_ids"], [[5, 6, 7, 8, 9, 0]])
    # position t predicts token t+1; tokens 6 and 7 are prefix, so only 8, 9 and EOS carry loss
    np.testing.assert_array_equal(batch["labels"], [[-100, -100, 8, 9, 1, -100]])
    np.testing.assert_array_equal(batch["prefix_mask"], [[True, True, True, False, False, False]])
    np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 1, 1, 0]])


def test_causal_lm_rows_predict_every_next_token():
    batch = decoder_batch([ex([], [5, 6, 7, 8])], 3, pad_id=0)
    np.testing.assert_array_equal(batch["input_ids"], [[5, 6, 7]])
    np.testing.assert_array_equal(batch["labels"], [[6, 7, 8]])
    assert not batch["prefix_mask"].any()


def test_packing_fills_rows_and_resets_positions():
    examples = [ex([5, 6], [7, 1]), ex([8], [9, 1]), ex([10, 11], [12, 13, 1])]
    batch = decoder_batch(examples, 8, pad_id=0, pack=True)
    assert batch["input_ids"].shape == (2, 8)
    np.testing.assert_array_equal(batch["input_ids"][0], [5, 6, 7, 8, 9, 0, 0, 0])
    np.testing.assert_array_equal(batch["segment_ids"][0], [1, 1, 1, 2, 2, 0, 0, 0])
    np.testing.assert_array_equal(batch["position_ids"][0, :5], [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(batch["labels"][0], [-100, 7, 1, 9, 1, -100, -100, -100])
    np.testing.assert_array_equal(batch["prefix_mask"][0], [1, 1, 0, 1, 0, 0, 0, 0])
    unpacked = decoder_batch(examples, 8, pad_id=0)
    assert unpacked["input_ids"].shape == (3, 8)
    # the same tokens carry loss either way
    assert (batch["labels"] != IGNORE_INDEX).sum() == (unpacked["labels"] != IGNORE_INDEX).sum()


@pytest.mark.parametrize("name", ["span_corruption", "bart", "prefix_lm", "ul2", "deshuffle"])
def test_pretrain_batches_for_both_architectures(tmp_path, small_corpus, unigram_tokenizer, name):
    shard = build_shard([str(small_corpus["train"])], unigram_tokenizer, tmp_path / "s", show_progress=False)
    cfg = load_config(None, [f"objective.name={name}", "objective.inputs_length=64"])
    objective, specials = resolve_objective(cfg.objective), unigram_tokenizer.specials
    enc_dec = PretrainBatches(shard, objective, 64, specials, seed=0).batch(0, 8)
    assert enc_dec["input_ids"].shape[1] == 64
    assert (enc_dec["attention_mask"].sum(1) <= 64).all()
    decoder = PretrainBatches(shard, objective, 64, specials, seed=0, architecture="decoder").batch(0, 8)
    # a decoder reads the same example as inputs + targets; the loss is on the same target tokens
    np.testing.assert_array_equal(np.sort(decoder["labels"][decoder["labels"] != IGNORE_INDEX]),
                                  np.sort(enc_dec["labels"][enc_dec["labels"] != IGNORE_INDEX]))


def test_decoder_only_objective_windows(tmp_path, small_corpus, unigram_tokenizer):
    shard = build_shard([str(small_corpus["train"])], unigram_tokenizer, tmp_path / "s", show_progress=False)
    cfg = load_config(None, ["objective.name=causal_lm", "objective.inputs_length=32"])
    data = PretrainBatches(shard, resolve_objective(cfg.objective), 32, unigram_tokenizer.specials, seed=0,
                           architecture="decoder")
    batch = data.batch(0, 4)
    assert batch["input_ids"].shape == (4, 32) and (batch["labels"] != IGNORE_INDEX).all()
    np.testing.assert_array_equal(batch["labels"][:, :-1], batch["input_ids"][:, 1:])


def test_objective_with_too_few_sentinels_fails_before_any_batch(tmp_path, small_corpus, unigram_tokenizer):
    shard = build_shard([str(small_corpus["train"])], unigram_tokenizer, tmp_path / "s", show_progress=False)
    cfg = load_config(None, ["objective.name=ul2", "objective.inputs_length=512"])
    with pytest.raises(PtlabError, match="sentinels"):
        PretrainBatches(shard, resolve_objective(cfg.objective), 512, unigram_tokenizer.specials, seed=0)


def test_the_saved_config_states_every_objective_parameter():
    cfg = load_config("configs/demo.yaml", ["objective.name=bart"])
    resolve_objective(cfg.objective, quiet=True)
    saved = cfg.to_dict()["objective"]
    assert saved["mask_ratio"] == 0.3 and saved["poisson_lambda"] == 3.0 and "noise_density" not in saved
