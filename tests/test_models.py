"""The model zoo against Hugging Face transformers: import/export logits, generation, attention masks."""

import json

import pytest
import torch

from ptlab.config import Config, ModelConfig
from ptlab.errors import PtlabError
from ptlab.models import build_model, count_parameters
from ptlab.models.generate import filter_logits, generate
from ptlab.models.hf import UNTIED_T5_NOTE
from ptlab.train.checkpoint import load_model, write_checkpoint
from ptlab.train.interop import export_hf, import_hf

transformers = pytest.importorskip("transformers")

V = 101


def hf_model(family, **overrides):
    """A randomly initialised HF model (no download), with its norms and biases randomised too."""
    torch.manual_seed(0)
    if family == "t5":
        cfg = dict(vocab_size=V, d_model=48, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=3, num_heads=3,
                   relative_attention_num_buckets=8, relative_attention_max_distance=20,
                   feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                   dropout_rate=0.0)
        model = transformers.T5ForConditionalGeneration(transformers.T5Config(**{**cfg, **overrides}))
    elif family == "bart":
        cfg = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                   dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1, bos_token_id=0,
                   eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)
        model = transformers.BartForConditionalGeneration(transformers.BartConfig(**{**cfg, **overrides}))
    elif family == "gpt2":
        cfg = dict(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=1,
                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**cfg, **overrides}))
    else:
        cfg = dict(vocab_size=V, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                   pad_token_id=0)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**cfg, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        if family == "bart":
            model.final_logits_bias.normal_()
    return model.eval()


def random_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, V, (3, 24), generator=g)
    y = torch.randint(3, V, (3, 11), generator=g)
    mask = torch.ones_like(x)
    mask[1, 17:] = 0
    return x, y, mask


def logits(model, family, x, y, mask, hf=False):
    with torch.no_grad():
        if family in ("t5", "bart"):
            if hf:
                return model(input_ids=x, decoder_input_ids=y, attention_mask=mask).logits
            return model(x, y, mask)
        return model(input_ids=x).logits if hf else model(x)


CASES = [("t5", {}), ("t5", {"tie_word_embeddings": False}),  # 5.x: tied head, unscaled (T5 v1.1 weights)
         ("t5", {"num_heads": 4, "feed_forward_proj": "relu", "tie_word_embeddings": True}),
         ("bart", {}), ("gpt2", {}), ("llama", {}), ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": True})]


@pytest.mark.parametrize("family,overrides", CASES)
def test_import_gives_hf_logits(tmp_path, family, overrides):
    hf = hf_model(family, **overrides)
    hf.save_pretrained(tmp_path / "hf")
    model = load_model(import_hf(tmp_path / "hf", tmp_path / "ours"))
    x, y, mask = random_inputs()
    expected, got = logits(hf, family, x, y, mask, hf=True), logits(model, family, x, y, mask)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4


EXPORTABLE = [("t5", {"feed_forward_proj": "relu", "tie_word_embeddings": True}), ("bart", {}), ("gpt2", {}),
              ("llama", {}), ("llama", {"tie_word_embeddings": True})]


@pytest.mark.parametrize("family,overrides", EXPORTABLE)
def test_export_round_trip_gives_the_same_logits_in_hf(tmp_path, family, overrides):
    hf = hf_model(family, **overrides)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(import_hf(tmp_path / "hf", tmp_path / "ours"))
    out, notes = export_hf(tmp_path / "ours", tmp_path / "exported")
    assert notes == []
    auto = transformers.AutoModelForSeq2SeqLM if family in ("t5", "bart") else transformers.AutoModelForCausalLM
    reloaded = auto.from_pretrained(out).eval()
    x, y, mask = random_inputs(2)
    assert (logits(reloaded, family, x, y, mask, hf=True) - logits(ours, family, x, y, mask)).abs().max() <= 1e-4


TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


@pytest.mark.parametrize("family", ["t5", "bart", "gpt2", "llama"])
def test_an_untied_export_keeps_its_own_head_through_tie_weights_save_and_resize(tmp_path, family):
    """What a user does next with an export (tie_weights, save_pretrained and from_pretrained, adding tokens),
    loaded as the export's notes and model card say: the output head stays its own, the logits ptlab's."""
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, vocab_size=V, d_model=32, num_heads=4, num_kv_heads=2 if family == "llama"
                      else None, num_layers=2, d_ff=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
                      bos_token_id=2, tie_word_embeddings=False)
    model = build_model(cfg).eval()
    with torch.no_grad():  # norms and biases away from their initial ones and zeros
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    write_checkpoint(tmp_path / "ckpt", model, Config(model=cfg), None)
    out, notes = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    assert notes == ([UNTIED_T5_NOTE] if family == "t5" else [])
    assert ("model.config.tie_word_embeddings = False" in (out / "README.md").read_text()) == (family == "t5")
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    auto = transformers.AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else transformers.AutoModelForCausalLM
    if family == "t5" and TRANSFORMERS_5:  # why the note: loaded plainly, tie_weights() ties the head
        plain = auto.from_pretrained(out).eval()
        assert plain.lm_head.weight is not plain.shared.weight
        plain.tie_weights()
        assert plain.lm_head.weight is plain.shared.weight

    def load(path):
        hf = auto.from_pretrained(path).eval()
        if UNTIED_T5_NOTE in notes:
            hf.config.tie_word_embeddings = False
        return hf

    x, y, mask = random_inputs()
    expected = logits(model, family, x, y, mask)

    def check(hf):
        assert hf.get_output_embeddings().weight is not hf.get_input_embeddings().weight
        assert (logits(hf, family, x, y, mask, hf=True)[..., :V] - expected).abs().max() <= 1e-4

    hf = load(out)
    check(hf)
    hf.tie_weights()
    check(hf)
    hf.save_pretrained(tmp_path / "saved")
    check(load(tmp_path / "saved"))
    hf.resize_token_embeddings(V + 7)  # new tokens: the embedding and the head grow, the old rows stay
    assert hf.get_output_embeddings().weight.shape[0] == hf.get_input_embeddings().weight.shape[0] == V + 7
    check(hf)
    if family != "bart" or not TRANSFORMERS_5:
        # transformers 5 saves a resized untied BART's encoder and decoder embeddings (by then the same tensor as
        # `shared`) under no name: one built by transformers itself loses them too, so this step is not ptlab's
        hf.save_pretrained(tmp_path / "resized")
        check(load(tmp_path / "resized"))


# ---- mT5 (README: import-hf reads mT5) -----------------------------------------------------------------------------

def hf_mt5():
    torch.manual_seed(0)
    cfg = transformers.MT5Config(vocab_size=V, d_model=48, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=3,
                                 num_heads=3, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    model = transformers.MT5ForConditionalGeneration(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_mt5_saved_by_transformers_5_imports_with_hf_logits(tmp_path):
    hf = hf_mt5()  # transformers 5.x: tied head, never scaled by d_model ** -0.5
    hf.save_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "mt5"
    model = load_model(import_hf(tmp_path / "hf", tmp_path / "ours"))
    x, y, mask = random_inputs()
    assert (logits(hf, "t5", x, y, mask, hf=True) - logits(model, "t5", x, y, mask)).abs().max() <= 1e-4


def test_mt5_in_the_published_4x_layout_imports_with_hf_logits(tmp_path):
    """google/mt5-* checkpoints: tie_word_embeddings false and a separate lm_head.weight."""
    from safetensors.torch import load_file, save_file

    hf_mt5().save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    config = json.loads(path.read_text())
    config.update(tie_word_embeddings=False, transformers_version="4.40.0")
    path.write_text(json.dumps(config))
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    weights["lm_head.weight"] = torch.randn(V, 48, generator=torch.Generator().manual_seed(4)) * 0.1
    save_file(weights, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(hf.lm_head.weight, weights["lm_head.weight"])  # transformers keeps the head apart too
    model = load_model(import_hf(tmp_path / "hf", tmp_path / "ours"))
    x, y, mask = random_inputs()
    assert (logits(hf, "t5", x, y, mask, hf=True) - logits(model, "t5", x, y, mask)).abs().max() <= 1e-4


@pytest.mark.parametrize("family,key,value,message", [
    ("llama", "rope_scaling", {"rope_type": "linear", "factor": 2.0}, "rope type 'linear' is not supported"),
    ("gpt2", "scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx=True is not supported"),
    ("bart", "activation_function", "relu", "activation_function='relu' is not supported"),
    ("t5", "feed_forward_proj", "gated-silu", "feed_forward_proj='gated-silu' is not supported"),
])
def test_unsupported_settings_are_clear_errors(tmp_path, family, key, value, message):
    hf_model(family).save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    config = json.loads(path.read_text())
    config[key] = value
    if key == "rope_scaling":
        config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    path.write_text(json.dumps(config))
    with pytest.raises(PtlabError, match=message):
        import_hf(tmp_path / "hf", tmp_path / "ours")
    assert not (tmp_path / "ours").exists()


# ---- generation ---------------------------------------------------------------------------------------------------

FAMILIES = ["t5", "bart", "gpt2", "llama"]


def imported(tmp_path, family):
    hf = hf_model(family)
    hf.save_pretrained(tmp_path / "hf")
    return hf, load_model(import_hf(tmp_path / "hf", tmp_path / "ours"))


def prompt(family):
    g = torch.Generator().manual_seed(5)
    return torch.randint(3, V, (2, 9 if family in ("t5", "bart") else 6), generator=g)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_hf_generate_and_cache_changes_nothing(tmp_path, family):
    hf, model = imported(tmp_path, family)
    x = prompt(family)
    ours = generate(model, x, max_new_tokens=12)
    uncached = generate(model, x, max_new_tokens=12, use_cache=False)
    assert torch.equal(ours, uncached)
    expected = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, num_beams=1,
                           max_new_tokens=12, min_length=0, no_repeat_ngram_size=0, forced_eos_token_id=None,
                           forced_bos_token_id=None, use_cache=False,  # HF 5.24 T5 cache breaks on 2+3 layers
                           pad_token_id=model.config.pad_token_id
                           if model.config.pad_token_id is not None else model.config.eos_token_id)
    expected = expected[:, 1:] if family in ("t5", "bart") else expected[:, x.shape[1]:]
    assert torch.equal(ours, expected[:, :ours.shape[1]])


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_padded_encoder_inputs_generate_as_alone(tmp_path, family):
    _, model = imported(tmp_path, family)
    short, long = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9, 10, 11, 12, 13, 14, 15]])
    batch = torch.tensor([[5, 6, 7, 8, 0, 0, 0], [9, 10, 11, 12, 13, 14, 15]])
    if family == "bart":
        batch[0, 4:] = model.config.pad_token_id
    mask = (torch.arange(7)[None] < torch.tensor([[4], [7]])).long()
    for beams in (1, 2):
        together = generate(model, batch, mask, max_new_tokens=6, eos_token_id=-1, num_beams=beams)
        assert torch.equal(together[0], generate(model, short, max_new_tokens=6, eos_token_id=-1, num_beams=beams)[0])
        assert torch.equal(together[1], generate(model, long, max_new_tokens=6, eos_token_id=-1, num_beams=beams)[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_search_and_sampling(tmp_path, family):
    _, model = imported(tmp_path, family)
    x = prompt(family)
    greedy = generate(model, x, max_new_tokens=8)
    assert torch.equal(generate(model, x, max_new_tokens=8, num_beams=1), greedy)
    beams = generate(model, x, max_new_tokens=8, num_beams=3)
    assert torch.equal(beams, generate(model, x, max_new_tokens=8, num_beams=3, use_cache=False))
    assert torch.equal(generate(model, x, max_new_tokens=8, do_sample=True, top_k=1, seed=0), greedy)
    a = generate(model, x, max_new_tokens=8, do_sample=True, temperature=2.0, seed=7)
    b = generate(model, x, max_new_tokens=8, do_sample=True, temperature=2.0, seed=7)
    c = generate(model, x, max_new_tokens=8, do_sample=True, temperature=2.0, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def sequence_log_prob(model, x, tokens, start):
    """Sum of log p over `tokens` (stopping after EOS) for row 0."""
    with torch.no_grad():
        if model.is_encoder_decoder:
            decoder_in = torch.cat([torch.tensor([[start]]), tokens[None, :-1]], dim=1)
            log_probs = model(x[:1], decoder_in).log_softmax(-1)[0]
        else:
            full = torch.cat([x[:1], tokens[None]], dim=1)
            log_probs = model(full).log_softmax(-1)[0, x.shape[1] - 1:-1]
    return log_probs.gather(1, tokens[:, None]).sum().item()


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy(tmp_path, family):
    _, model = imported(tmp_path, family)
    x = prompt(family)
    start = model.config.decoder_start_token_id
    greedy = generate(model, x[:1], max_new_tokens=6, eos_token_id=-1)[0]
    beam = generate(model, x[:1], max_new_tokens=6, num_beams=4, eos_token_id=-1, length_penalty=0.0)[0]
    assert sequence_log_prob(model, x, beam, start) >= sequence_log_prob(model, x, greedy, start) - 1e-5


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.01)).sum() == 1
    assert torch.isfinite(filter_logits(logits, top_k=3)).sum() == 3


def test_left_padded_prompts_generate_as_alone(tmp_path):
    _, model = imported(tmp_path, "llama")
    short, long = torch.tensor([[5, 6, 7]]), torch.tensor([[8, 9, 10, 11, 12]])
    batch = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    together = generate(model, batch, mask, max_new_tokens=5, eos_token_id=-1)
    assert torch.equal(together[0], generate(model, short, max_new_tokens=5, eos_token_id=-1)[0])
    assert torch.equal(together[1], generate(model, long, max_new_tokens=5, eos_token_id=-1)[0])


# ---- architectures ------------------------------------------------------------------------------------------------

def tiny(family, **kw):
    base = dict(family=family, vocab_size=V, d_model=32, num_heads=4, d_ff=64, num_layers=2)
    return build_model(ModelConfig(**{**base, **kw})).eval()


def test_shared_encoder_decoder_has_about_half_the_parameters_and_trains():
    torch.manual_seed(0)
    shared = tiny("t5", shared_encoder_decoder=True, d_model=64, d_ff=256)
    unshared = tiny("t5", d_model=64, d_ff=256)
    embeddings = 2 * V * 64  # token embedding and the untied head, the same in both
    ratio = (count_parameters(shared) - embeddings) / (count_parameters(unshared) - embeddings)
    assert 0.5 < ratio < 0.6
    assert shared.decoder_blocks[0].self_attn is shared.encoder_blocks[0].attn
    shared.train()
    optimizer = torch.optim.AdamW(shared.parameters(), lr=3e-3)
    x = torch.randint(3, V, (8, 12))
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(shared(x, x).flatten(0, 1), x.roll(-1, 1).flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_lm_never_sees_the_future(family):
    model = tiny(family)
    x = torch.randint(3, V, (2, 16))
    changed = x.clone()
    changed[:, 9:] = torch.randint(3, V, (2, 7))
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    assert (a[:, 9:] - b[:, 9:]).abs().max() > 1e-4


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_prefix_lm_sees_the_whole_prefix_and_nothing_after(family):
    model = tiny(family, prefix_lm=True)
    x = torch.randint(3, V, (1, 16))
    prefix = torch.zeros(1, 16, dtype=torch.bool)
    prefix[:, :8] = True
    segments = torch.ones(1, 16, dtype=torch.long)
    with torch.no_grad():
        base = model(x, segment_ids=segments, prefix_mask=prefix)
        late_prefix = x.clone()
        late_prefix[0, 7] = (x[0, 7] + 1) % V
        after_prefix = x.clone()
        after_prefix[0, 8:] = torch.randint(3, V, (8,))
        a = model(late_prefix, segment_ids=segments, prefix_mask=prefix)
        b = model(after_prefix, segment_ids=segments, prefix_mask=prefix)
    assert (a[0, 0] - base[0, 0]).abs().max() > 1e-4  # position 0 sees the last prefix token
    torch.testing.assert_close(b[0, :8], base[0, :8], rtol=0, atol=1e-6)  # but nothing after the prefix
    # a causal model configured without prefix_lm ignores the prefix mask
    causal = tiny(family)
    with torch.no_grad():
        torch.testing.assert_close(causal(late_prefix, prefix_mask=prefix)[0, :7], causal(x)[0, :7], rtol=0,
                                   atol=1e-6)


def test_packed_examples_do_not_attend_to_each_other():
    model = tiny("llama")
    first, second = torch.randint(3, V, (1, 6)), torch.randint(3, V, (1, 5))
    packed = torch.cat([first, second], dim=1)
    segments = torch.tensor([[1] * 6 + [2] * 5])
    positions = torch.tensor([list(range(6)) + list(range(5))])
    with torch.no_grad():
        together = model(packed, position_ids=positions, segment_ids=segments)
        torch.testing.assert_close(together[:, 6:], model(second), rtol=0, atol=1e-5)
        torch.testing.assert_close(together[:, :6], model(first), rtol=0, atol=1e-5)


def test_prefix_and_packed_masks_compile_without_graph_breaks_and_match_eager():
    """Deciding on the host whether a mask is needed would break a compiled graph (and wait for the GPU); compiled,
    the model builds the full mask, which must give the eager model's logits."""
    model = tiny("llama", prefix_lm=True)
    x = torch.randint(3, V, (2, 12))
    segments = torch.tensor([[1] * 7 + [2] * 5, [1] * 10 + [0] * 2])
    positions = torch.tensor([list(range(7)) + list(range(5)), list(range(12))])
    prefix = torch.zeros(2, 12, dtype=torch.bool)
    prefix[0, :3] = True  # the second row has no prefix, the same mask but for a different reason
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break is an error
    with torch.no_grad():
        eager = model(x, position_ids=positions, segment_ids=segments, prefix_mask=prefix)
        torch.testing.assert_close(compiled(x, position_ids=positions, segment_ids=segments, prefix_mask=prefix),
                                   eager, rtol=1e-5, atol=1e-5)


def test_an_hf_config_with_special_ids_outside_its_vocabulary_imports_with_a_warning(capsys):
    """transformers builds and loads a small GPT-2 whose config keeps GPT-2's 50256 for BOS/EOS: ptlab imports it
    too, without those ids, and says which it left out (it used to refuse the whole model)."""
    from ptlab.models.hf import model_config_from_hf

    hf = {"model_type": "gpt2", "vocab_size": 100, "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64,
          "bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": 7}
    cfg = model_config_from_hf(hf)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (None, None, 7)
    warning = capsys.readouterr().err.strip()
    assert warning.count("\n") == 0 and "eos_token_id=50256" in warning and "bos_token_id=50256" in warning
    assert "pad_token_id" not in warning
