"""Generation for every family: greedy, beam search, and sampling (temperature, top-k, top-p), with a KV cache.

    new_tokens = generate(model, input_ids, attention_mask, max_new_tokens=32, num_beams=4)

Encoder-decoders generate the decoder sequence from their start token; decoder-only models continue the prompt
(left-pad a batch of prompts and pass its attention mask). Returns the new tokens [batch, <= max_new_tokens];
after a row's EOS the rest of the row is padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ptlab.errors import PtlabError


@dataclass
class GenerationOptions:
    max_new_tokens: int = 32
    num_beams: int = 1  # > 1: beam search
    length_penalty: float = 1.0  # beam search: a hypothesis scores sum(log p) / generated_length ** length_penalty
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    seed: int | None = None  # sampling: a fixed seed gives the same samples
    use_cache: bool = True
    eos_token_id: int | None = None  # None: the model config's
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None

    def validate(self) -> None:
        checks = [(self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
                  (self.num_beams >= 1, "num_beams must be >= 1"),
                  (self.temperature > 0, "temperature must be positive"),
                  (self.top_k >= 0, "top_k must be >= 0"),
                  (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
                  (not (self.do_sample and self.num_beams > 1), "choose sampling or beam search, not both")]
        for ok, message in checks:
            if not ok:
                raise PtlabError(f"generation: {message}")


class _Stepper:
    """Next-token logits for a growing batch of sequences, with or without a KV cache."""

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 start_id: int, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        self.encoder_decoder = model.is_encoder_decoder
        self.cache = model.new_cache() if use_cache else None
        self.past = 0
        self.limit = None
        if self.encoder_decoder:
            self.encoded = model.encode(input_ids, attention_mask)
            self.mask = attention_mask
            self.tokens = torch.full((input_ids.shape[0], 1), start_id, dtype=torch.long, device=input_ids.device)
        else:
            self.tokens = input_ids
            padded = attention_mask is not None and not bool(attention_mask.all())
            self.mask = attention_mask.long() if padded else None
            if model.config.spec.positions == "learned":
                self.limit = model.config.max_position_embeddings

    def logits(self) -> torch.Tensor:
        if self.encoder_decoder:
            if self.use_cache:
                out = self.model.decode(self.tokens[:, self.past:], self.encoded, self.mask, self.cache, self.past)
            else:
                out = self.model.decode(self.tokens, self.encoded, self.mask)
        else:
            if self.limit is not None and self.tokens.shape[1] > self.limit:
                raise PtlabError(f"generation: {self.tokens.shape[1]} tokens exceed the model's "
                                 f"{self.limit} positions (model.max_position_embeddings)")
            positions = None
            if self.mask is not None:  # left padding: positions count real tokens only
                positions = (self.mask.cumsum(dim=1) - 1).clamp(min=0)
            if self.use_cache:
                new = self.tokens[:, self.past:]
                out = self.model(new, position_ids=None if positions is None else positions[:, self.past:],
                                 attention_mask=self.mask, cache=self.cache, past_length=self.past)
            else:
                out = self.model(self.tokens, position_ids=positions, attention_mask=self.mask)
        self.past = self.tokens.shape[1]
        return out[:, -1].float()

    def append(self, next_tokens: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Add one token per row; `rows` first reorders the batch (beam search)."""
        if rows is not None:
            self.tokens = self.tokens.index_select(0, rows)
            if self.encoder_decoder:
                self.encoded = self.encoded.index_select(0, rows)
            if self.mask is not None:
                self.mask = self.mask.index_select(0, rows)
            if self.cache is not None:
                for layer in self.cache:
                    for kv in (layer if isinstance(layer, tuple) else (layer,)):
                        kv.reorder(rows)
        self.tokens = torch.cat([self.tokens, next_tokens[:, None]], dim=1)
        if self.mask is not None and not self.encoder_decoder:  # a decoder's mask covers the generated tokens too
            self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering; filtered tokens get -inf."""
    logits = logits / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        remove_sorted = mass_before >= top_p  # keeps the smallest set reaching top_p, and always the top token
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def _options(model: nn.Module, options: GenerationOptions | None, overrides: dict) -> GenerationOptions:
    options = GenerationOptions(**{**(options.__dict__ if options else {}), **overrides})
    cfg = model.config
    if options.eos_token_id is None:
        options.eos_token_id = cfg.eos_token_id
    if options.pad_token_id is None:
        options.pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else options.eos_token_id
    if options.decoder_start_token_id is None:
        options.decoder_start_token_id = cfg.decoder_start_token_id
    if model.is_encoder_decoder and options.decoder_start_token_id is None:
        options.decoder_start_token_id = options.pad_token_id
    options.validate()
    return options


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             options: GenerationOptions | None = None, **overrides) -> torch.Tensor:
    """New tokens [batch, <= max_new_tokens] (see the module docstring); options as keyword arguments or
    `GenerationOptions`."""
    opts = _options(model, options, overrides)
    was_training = model.training
    model.eval()
    try:
        if opts.num_beams > 1:
            return _beam_search(model, input_ids, attention_mask, opts)
        return _greedy_or_sample(model, input_ids, attention_mask, opts)
    finally:
        model.train(was_training)


def _greedy_or_sample(model, input_ids, attention_mask, opts: GenerationOptions) -> torch.Tensor:
    stepper = _Stepper(model, input_ids, attention_mask, opts.decoder_start_token_id, opts.use_cache)
    generator = None
    if opts.do_sample:
        generator = torch.Generator(device=input_ids.device)
        generator.manual_seed(opts.seed if opts.seed is not None else torch.seed())
    batch = input_ids.shape[0]
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    new_tokens = []
    for _ in range(opts.max_new_tokens):
        logits = stepper.logits()
        if opts.do_sample:
            probs = filter_logits(logits, opts.temperature, opts.top_k, opts.top_p).softmax(dim=-1)
            next_tokens = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            next_tokens = logits.argmax(dim=-1)
        next_tokens = next_tokens.masked_fill(finished, opts.pad_token_id)
        new_tokens.append(next_tokens)
        if opts.eos_token_id is not None:
            finished |= next_tokens == opts.eos_token_id
        if bool(finished.all()):
            break
        stepper.append(next_tokens)
    return torch.stack(new_tokens, dim=1)


def _beam_search(model, input_ids, attention_mask, opts: GenerationOptions) -> torch.Tensor:
    """Standard beam search: `num_beams` running hypotheses per input; a hypothesis ending in EOS is set aside with
    score sum(log p) / length ** length_penalty; an input is done when it has `num_beams` finished hypotheses and
    no running one can still beat the worst of them (or at max_new_tokens)."""
    beams, batch = opts.num_beams, input_ids.shape[0]
    expand = torch.arange(batch, device=input_ids.device).repeat_interleave(beams)
    mask = attention_mask.index_select(0, expand) if attention_mask is not None else None
    stepper = _Stepper(model, input_ids.index_select(0, expand), mask, opts.decoder_start_token_id,
                       opts.use_cache)
    scores = torch.zeros(batch, beams, device=input_ids.device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    history = torch.zeros(batch * beams, 0, dtype=torch.long, device=input_ids.device)
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(batch)]
    done = [False] * batch

    def normalised(total: float, length: int) -> float:
        return total / (length ** opts.length_penalty)

    for step in range(opts.max_new_tokens):
        log_probs = F.log_softmax(stepper.logits(), dim=-1)
        vocab = log_probs.shape[-1]
        candidates = (scores.view(-1, 1) + log_probs).view(batch, beams * vocab)
        top_scores, top_ids = candidates.topk(2 * beams, dim=-1)
        next_scores = torch.full((batch, beams), float("-inf"), device=input_ids.device)
        next_tokens = torch.full((batch, beams), opts.pad_token_id, dtype=torch.long, device=input_ids.device)
        next_rows = torch.arange(batch * beams, device=input_ids.device).view(batch, beams).clone()
        for b in range(batch):
            if done[b]:
                continue
            kept = 0
            for score, flat in zip(top_scores[b].tolist(), top_ids[b].tolist()):
                beam, token = divmod(flat, vocab)
                row = b * beams + beam
                if token == opts.eos_token_id:
                    sequence = torch.cat([history[row], history.new_tensor([token])])
                    finished[b].append((normalised(score, step + 1), sequence))
                else:
                    next_scores[b, kept], next_tokens[b, kept], next_rows[b, kept] = score, token, row
                    kept += 1
                if kept == beams:
                    break
            finished[b] = sorted(finished[b], key=lambda item: -item[0])[:beams]
            best_running = next_scores[b].max().item()
            if len(finished[b]) == beams and normalised(best_running, step + 1) <= finished[b][-1][0]:
                done[b] = True
        if all(done):
            break
        scores = next_scores
        rows = next_rows.view(-1)
        history = torch.cat([history.index_select(0, rows), next_tokens.view(-1, 1)], dim=1)
        stepper.append(next_tokens.view(-1), rows)
    for b in range(batch):
        if not done[b]:
            for beam in range(beams):
                if scores[b, beam] > float("-inf"):
                    finished[b].append((normalised(scores[b, beam].item(), history.shape[1]),
                                        history[b * beams + beam]))
    best = [max(finished[b], key=lambda item: item[0])[1] for b in range(batch)]
    out = torch.full((batch, max(len(s) for s in best)), opts.pad_token_id, dtype=torch.long,
                     device=input_ids.device)
    for b, sequence in enumerate(best):
        out[b, :len(sequence)] = sequence
    return out
