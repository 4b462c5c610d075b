"""Training against Hugging Face transformers: the same random weights, the same batch, in fp32 and train mode
(dropout 0): the logits, the trainer's loss and the gradient of every mapped parameter agree."""

import pytest
import torch

from ptlab.models.hf import to_hf_state_dict
from ptlab.train.checkpoint import load_model
from ptlab.train.interop import import_hf
from ptlab.train.loop import summed_loss

transformers = pytest.importorskip("transformers")

from test_models import V, hf_model  # the parity tests' random HF models

CASES = [("t5", {"tie_word_embeddings": True}),  # T5 v1.1 blocks with the original tied, scaled head
         ("t5", {"feed_forward_proj": "relu", "tie_word_embeddings": True}),
         ("t5", {"tie_word_embeddings": False}),  # transformers 5.x: tied but unscaled; ptlab: two matrices
         ("bart", {}), ("gpt2", {}), ("llama", {}), ("llama", {"tie_word_embeddings": True})]


def paired(tmp_path, family, overrides):
    hf = hf_model(family, **overrides)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(import_hf(tmp_path / "hf", tmp_path / "ours"))
    return hf.train(), ours.train()


def batch(family):
    """A padded batch with ignored labels; decoder-only labels are the next tokens (ptlab's layout)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(3, V, (3, 20), generator=g)
    if family in ("t5", "bart"):
        mask = torch.ones_like(x)
        mask[1, 14:] = 0
        labels = torch.randint(3, V, (3, 9), generator=g)
        labels[2, 6:] = -100
        start = 0 if family == "t5" else 2
        decoder_input_ids = torch.cat([torch.full((3, 1), start), labels[:, :-1].clamp(min=0)], dim=1)
        return {"input_ids": x, "attention_mask": mask, "decoder_input_ids": decoder_input_ids, "labels": labels}
    labels = torch.cat([x[:, 1:], torch.full((3, 1), -100)], dim=1)
    labels[:, :5] = -100  # a prefix without loss, as a prefix-LM example has
    positions = torch.arange(20).expand(3, 20)
    return {"input_ids": x, "position_ids": positions, "labels": labels}


def hf_loss(hf, family, b):
    """transformers' own mean loss (it shifts a causal LM's labels itself), times the labelled tokens."""
    if family in ("t5", "bart"):
        out = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                 decoder_input_ids=b["decoder_input_ids"], labels=b["labels"])
        count = (b["labels"] != -100).sum()
    else:
        hf_labels = torch.cat([torch.full((3, 1), -100), b["labels"][:, :-1]], dim=1)  # label t is token t
        out = hf(input_ids=b["input_ids"], labels=hf_labels)
        count = (hf_labels != -100).sum()
    return out.loss * count, out.logits


def ours_in_hf_names(model, cfg):
    """ptlab's gradients renamed (and GPT-2's Conv1D ones transposed and fused) as HF parameters."""
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)) for name, p in model.named_parameters()}
    for name, buffer in model.named_buffers():
        grads.setdefault(name, torch.zeros_like(buffer))
    return to_hf_state_dict(grads, cfg)


def assert_every_gradient_matches(hf, ours):
    ours_grads = ours_in_hf_names(ours, ours.config)
    aliases = {}  # tied HF weights are one tensor under several names (shared/lm_head, wte/lm_head)
    for name, tensor in hf.state_dict(keep_vars=True).items():
        aliases.setdefault(id(tensor), []).append(name)
    compared = 0
    for name, param in hf.named_parameters():
        names = [n for n in aliases[id(param)] if n in ours_grads]
        assert names, f"{name} has no ptlab counterpart"
        got = sum(ours_grads[n] for n in names)
        assert param.grad is not None, name
        if not name.endswith("k_proj.bias"):  # a key bias shifts every score of a query alike: gradient 0
            assert param.grad.abs().max() > 1e-7, name
        # measured: within 3.5e-6 of each parameter's largest gradient
        scale = param.grad.abs().max().item()
        assert (got - param.grad).abs().max().item() <= 1e-4 * scale + 1e-7, name
        compared += 1
    assert compared == len(list(hf.parameters()))


@pytest.mark.parametrize("family,overrides", CASES)
def test_train_mode_logits_loss_and_every_gradient_match_hf(tmp_path, family, overrides):
    hf, ours = paired(tmp_path, family, overrides)
    b = batch(family)
    expected_loss, expected_logits = hf_loss(hf, family, b)
    got_loss = summed_loss(ours, b)  # the trainer's own loss on the trainer's batch layout
    got_logits = (ours(b["input_ids"], b["decoder_input_ids"], b["attention_mask"]) if family in ("t5", "bart")
                  else ours(b["input_ids"]))
    assert (got_logits - expected_logits).abs().max() <= 1e-4
    assert got_loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)
    expected_loss.backward()
    got_loss.backward()
    assert_every_gradient_matches(hf, ours)


@pytest.mark.slow
@pytest.mark.parametrize("family,overrides", CASES)
def test_compiled_gradients_match_hf(tmp_path, family, overrides):
    """Compiled on a CPU, the trainer's loss runs ptlab's own attention backward and cross-entropy gradient
    (models/kernels.py); in fp32 they must give HF's gradients too. aot_eager: the same kernels, no code generation."""
    hf, ours = paired(tmp_path, family, overrides)
    b = batch(family)
    expected_loss, _ = hf_loss(hf, family, b)
    torch._dynamo.reset()
    got_loss = torch.compile(lambda batch: summed_loss(ours, batch), backend="aot_eager")(b)
    assert got_loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)
    expected_loss.backward()
    got_loss.backward()
    assert_every_gradient_matches(hf, ours)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_right_padded_decoder_only_batch_gives_each_rows_logits(tmp_path, family):
    hf, ours = paired(tmp_path, family, {})
    hf.eval(), ours.eval()
    short, long = torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17, 18]])
    padded = torch.zeros(2, 9, dtype=torch.long)
    padded[0, :5], padded[1] = short[0], long[0]
    mask = (torch.arange(9)[None] < torch.tensor([[5], [9]])).long()
    with torch.no_grad():
        alone = [ours(short)[0], ours(long)[0]]
        together = ours(padded, attention_mask=mask)
        segments = ours(padded, segment_ids=mask)  # the trainer's layout: segment 0 is padding
        hf_together = hf(input_ids=padded, attention_mask=mask).logits
    for logits in (together, segments, hf_together):
        torch.testing.assert_close(logits[0, :5], alone[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(logits[1], alone[1], rtol=0, atol=1e-5)
