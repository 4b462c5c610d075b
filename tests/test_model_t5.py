import pytest
import torch

from ptlab.config import ModelConfig
from ptlab.models import build_model
from ptlab.models.hf import from_hf_state_dict as t5_from_hf_state_dict
from ptlab.models.hf import to_hf_state_dict as t5_to_hf_state_dict
from ptlab.models.t5 import shift_right

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=101, d_model=48, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=3,
             relative_attention_num_buckets=8, relative_attention_max_distance=20)


def hf_t5(feed_forward, tie, heads):
    config = transformers.T5Config(
        vocab_size=SMALL["vocab_size"], d_model=SMALL["d_model"], d_kv=SMALL["d_kv"], d_ff=SMALL["d_ff"],
        num_layers=SMALL["num_layers"], num_decoder_layers=SMALL["num_decoder_layers"], num_heads=heads,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj=feed_forward,
        tie_word_embeddings=tie, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    return transformers.T5ForConditionalGeneration(config).eval()


@pytest.mark.parametrize("feed_forward,tie,heads", [("gated-gelu", False, 3), ("gated-gelu", False, 4),
                                                    ("relu", True, 5)])
def test_logits_match_hf_t5(feed_forward, tie, heads):
    torch.manual_seed(0)
    hf = hf_t5(feed_forward, tie, heads)
    cfg = ModelConfig(num_heads=heads, feed_forward=feed_forward, tie_word_embeddings=tie, **SMALL)
    model = build_model(cfg).eval()
    model.load_state_dict(t5_from_hf_state_dict(hf.state_dict(), cfg), strict=True)
    # sequences longer than max_distance exercise the logarithmic buckets
    input_ids = torch.randint(2, 101, (3, 45))
    decoder_ids = torch.randint(2, 101, (3, 29))
    mask = torch.ones_like(input_ids)
    mask[1, 30:] = 0
    mask[2, 5:] = 0
    with torch.no_grad():
        expected = hf(input_ids=input_ids, decoder_input_ids=decoder_ids, attention_mask=mask).logits
        got = model(input_ids, decoder_ids, mask)
    assert got.shape == expected.shape == (3, 29, 101)
    assert (got - expected).abs().max().item() <= 1e-4


def test_key_map_round_trip_is_lossless():
    hf = hf_t5("gated-gelu", False, 4)
    cfg = ModelConfig(num_heads=4, **SMALL)
    hf_state = hf.state_dict()
    back = t5_to_hf_state_dict(t5_from_hf_state_dict(hf_state, cfg), cfg)
    for key, tensor in back.items():
        assert torch.equal(tensor, hf_state[key]), key


def test_decoder_is_causal():
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_heads=4, **SMALL)).eval()
    x = torch.randint(2, 101, (2, 20))
    y = torch.randint(2, 101, (2, 12))
    y_changed = y.clone()
    y_changed[:, 7:] = torch.randint(2, 101, (2, 5))
    with torch.no_grad():
        a, b = model(x, y), model(x, y_changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-3


def test_encoder_padding_does_not_change_outputs():
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_heads=4, **SMALL)).eval()
    x = torch.randint(2, 101, (1, 15))
    y = torch.randint(2, 101, (1, 6))
    padded = torch.cat([x, torch.zeros(1, 9, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 15), torch.zeros(1, 9)], dim=1).long()
    with torch.no_grad():
        torch.testing.assert_close(model(x, y), model(padded, y, mask), rtol=0, atol=1e-5)


def test_untied_head_starts_near_uniform_loss():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=8192, d_model=256, d_ff=1024, num_heads=4, num_layers=2)
    model = build_model(cfg)
    x, y = torch.randint(3, 8192, (4, 64)), torch.randint(3, 8192, (4, 16))
    with torch.no_grad():
        logits = model(x, shift_right(y, 0, 0))
    loss = torch.nn.functional.cross_entropy(logits.view(-1, 8192), y.view(-1)).item()
    assert loss < torch.log(torch.tensor(8192.0)).item() + 3  # not ~110 as with a std-1 head (nanoT5 #25)


def test_shift_right():
    labels = torch.tensor([[5, 6, 7, -100]])
    assert shift_right(labels, 0, 0).tolist() == [[0, 5, 6, 7]]
