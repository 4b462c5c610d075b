"""Run configuration: dataclasses loaded from YAML, with dotted command-line overrides.

    cfg = load_config("configs/t5-tiny.yaml", ["train.max_steps=200", "model.d_model=128"])

Every mistake (unknown key, wrong type, bad value) is a `PtlabError` naming the key, with the nearest valid key
suggested, so the CLI can print it as one line.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ptlab.errors import PtlabError
from ptlab.families import FAMILIES, FamilySpec, families_where, family_spec, unknown_family
from ptlab.objectives.registry import build_objective
from ptlab.schema import apply_overrides, from_dict, parse_value, read_yaml, set_dotted  # noqa: F401 - re-exported

MAX_LAYERS = 2048  # per stack; the deepest published models (DeepNet) have 1,000


@dataclass
class ModelConfig:
    """The architecture. Keys left at None take the family's default (see `validate`)."""

    family: str = "t5"  # a name in ptlab.families: t5 | bart (encoder-decoders) | gpt2 | llama (decoder-only)
    vocab_size: int | None = None  # None: taken from the tokenizer
    d_model: int = 256
    d_kv: int | None = None  # per-head size; None: d_model // num_heads
    d_ff: int = 1024
    num_heads: int = 4
    num_kv_heads: int | None = None  # llama: grouped-query attention; None: num_heads
    num_layers: int = 4  # encoder layers (decoder-only: all layers)
    num_decoder_layers: int | None = None  # None: same as num_layers
    shared_encoder_decoder: bool = False  # t5: the decoder reuses the encoder's attention and FFN (T5 Table 2)
    prefix_lm: bool = False  # gpt2/llama: attention fully visible over the prefix (T5's "prefix LM")
    feed_forward: str = "gated-gelu"  # t5: gated-gelu (v1.1) | relu (original T5)
    tie_word_embeddings: bool | None = None  # None: t5 False (v1.1), bart/gpt2 True, llama False
    relative_attention_num_buckets: int = 32  # t5
    relative_attention_max_distance: int = 128  # t5
    max_position_embeddings: int = 1024  # bart/gpt2 learned positions
    rope_theta: float = 10_000.0  # llama
    scale_embedding: bool = False  # bart: embeddings times sqrt(d_model)
    layer_norm_eps: float | None = None  # None: t5/llama 1e-6, bart/gpt2 1e-5
    dropout: float = 0.0
    initializer_factor: float = 1.0
    # Normalise each head's queries and keys (RMSNorm over the head dimension, learned gain) before attention:
    # bounded attention logits, stable at higher learning rates (OLMo 2, modded-nanogpt). Not in HF's GPT-2/T5/BART
    qk_norm: bool = False
    # Start every residual branch's output projection (attention's and the feed-forward's) at zero, so each block
    # starts as the identity (modded-nanogpt; "ReZero"-like)
    zero_init_output: bool = False
    # Special ids the model needs to generate (None: taken from the tokenizer when training starts).
    pad_token_id: int | None = None
    eos_token_id: int | None = None
    bos_token_id: int | None = None
    decoder_start_token_id: int | None = None  # None: t5 pad, bart eos

    @property
    def spec(self) -> FamilySpec:
        """What the family is (`ptlab.families`): code asks this, never the family's name."""
        return family_spec(self.family)

    @property
    def is_encoder_decoder(self) -> bool:
        return self.spec.encoder_decoder

    def validate(self) -> None:
        """Check the keys and fill the family defaults in place."""
        _check(self.family in FAMILIES, "model.family", unknown_family(self.family))
        _check(self.feed_forward in ("gated-gelu", "relu"), "model.feed_forward",
               f"must be 'gated-gelu' or 'relu', got {self.feed_forward!r}")
        for key in ("d_model", "d_ff", "num_heads", "num_layers", "max_position_embeddings"):
            _check(getattr(self, key) > 0, f"model.{key}", "must be positive")
        # Building even an empty (meta-device) model costs memory per layer: a typo of 10**6 layers exhausts the host
        for key in ("num_layers", "num_decoder_layers"):
            _check((getattr(self, key) or 0) <= MAX_LAYERS, f"model.{key}", f"must be at most {MAX_LAYERS:,}")
        for key in ("vocab_size", "d_kv", "num_kv_heads", "num_decoder_layers", "relative_attention_num_buckets",
                    "relative_attention_max_distance"):
            _check(getattr(self, key) is None or getattr(self, key) > 0, f"model.{key}", "must be positive")
        for key in ("rope_theta", "layer_norm_eps", "initializer_factor"):
            _check(getattr(self, key) is None or getattr(self, key) > 0, f"model.{key}", "must be positive")
        for key in ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id"):
            value = getattr(self, key)
            _check(value is None or 0 <= value < (self.vocab_size or 2**31), f"model.{key}",
                   f"must be a token id in [0, vocab_size), got {value}")
        _check(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        spec = self.spec
        if self.tie_word_embeddings is None:
            self.tie_word_embeddings = spec.tie_word_embeddings
        if self.layer_norm_eps is None:
            self.layer_norm_eps = spec.layer_norm_eps
        if self.d_kv is None:
            _check(self.d_model % self.num_heads == 0, "model.num_heads",
                   f"must divide model.d_model ({self.d_model}) unless model.d_kv is set")
            self.d_kv = self.d_model // self.num_heads
        if spec.fixed_head_size:
            _check(self.d_kv * self.num_heads == self.d_model, "model.d_kv",
                   f"{self.family} needs d_kv * num_heads == d_model ({self.d_kv} * {self.num_heads} != "
                   f"{self.d_model})")
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        _check(self.num_kv_heads == self.num_heads or spec.grouped_query, "model.num_kv_heads",
               f"grouped-query attention is a {', '.join(families_where(grouped_query=True))} option")
        _check(self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads == 0, "model.num_kv_heads",
               f"must divide model.num_heads ({self.num_heads})")
        _check(not self.shared_encoder_decoder or spec.shared_encoder_decoder, "model.shared_encoder_decoder",
               f"is a {', '.join(families_where(shared_encoder_decoder=True))} option")
        _check(not self.shared_encoder_decoder or self.num_decoder_layers in (None, self.num_layers),
               "model.shared_encoder_decoder", "needs as many decoder layers as encoder layers")
        _check(not self.prefix_lm or not self.is_encoder_decoder, "model.prefix_lm",
               f"is for decoder-only families ({', '.join(families_where(encoder_decoder=False))})")
        _check(self.num_decoder_layers is None or self.is_encoder_decoder, "model.num_decoder_layers",
               "is for encoder-decoder families; decoder-only models use model.num_layers")


@dataclass
class ObjectiveConfig:
    """`name` picks the objective; every other key in the YAML section is one of its parameters (see
    `ptlab objectives list`), e.g. `objective: {name: bart, mask_ratio: 0.3}`. They are checked against the objective
    when it is built (`ptlab.objectives.build_objective`)."""

    EXTRA_KEYS: ClassVar[str] = "params"  # keys that are not fields go here (see `ptlab.schema.from_dict`)
    INTERNAL_FIELDS: ClassVar[tuple[str, ...]] = ("params", "inherited")

    name: str = "span_corruption"
    inputs_length: int = 512  # encoder tokens per example (decoder-only objectives: tokens per sequence)
    pack: bool = False  # decoder-only models: pack several examples into each row
    params: dict[str, Any] = field(default_factory=dict)
    # Parameters from a config file whose objective was switched by a `objective.name=...` override: those the new
    # objective takes still apply, the rest are dropped (with a note) instead of failing.
    inherited: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        _check(self.inputs_length >= 4, "objective.inputs_length", "must be >= 4")
        build_objective(self.name, self.params, self.inherited)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "inputs_length": self.inputs_length, "pack": self.pack,
                **self.inherited, **self.params}


@dataclass
class MixtureSource:
    """One source of a weighted pre-training mixture (`data.mixture`)."""

    name: str = ""  # names the source in metrics and its shard directory
    files: list[str] = field(default_factory=list)  # JSONL files, a token-shard directory, or task:NAME entries
    weight: float = 0.0  # its share of the training examples (the weights are normalised to sum to 1)
    epochs_cap: float | None = None  # at most this many passes over its chunks; then its weight goes to the rest
    sources: list[str] = field(default_factory=list)  # keep only these corpus sources; empty: data.sources
    # Validation text of its own: the sources' own files together replace data.validation_files
    validation_files: list[str] = field(default_factory=list)

    def validate(self, key: str) -> None:
        _check(bool(re.fullmatch(r"[A-Za-z0-9_.-]+", self.name)), f"{key}.name",
               f"needs a name of letters, digits, '_', '.' or '-' (got {self.name!r})")
        _check(bool(self.files), f"{key}.files", "must name at least one file")
        _check(self.weight > 0, f"{key}.weight", f"must be positive (got {self.weight})")
        _check(self.epochs_cap is None or self.epochs_cap > 0, f"{key}.epochs_cap", "must be positive")


DEFAULT_TRAIN_FILES = ["data/corpus/train.jsonl.gz"]


@dataclass
class DataConfig:
    # JSONL files (or task:NAME / task:path/to/task.yaml: a fine-tuning task's training inputs, without labels)
    train_files: list[str] = field(default_factory=lambda: list(DEFAULT_TRAIN_FILES))
    validation_files: list[str] = field(default_factory=lambda: ["data/corpus/validation.jsonl.gz"])
    sources: list[str] = field(default_factory=list)  # keep only these corpus sources; empty: all
    tokenizer: str = "runs/tokenizer-unigram-8k"  # a directory with tokenizer.json; trained there if missing
    tokenizer_kind: str = "unigram"
    vocab_size: int = 8192
    num_sentinels: int = 100
    tokenizer_sample_bytes: int = 10_000_000  # train the tokenizer on about this much text, spread over the corpus
    separator: str = "eos"  # between documents in the token stream: "eos" or "none" (T5's original choice)
    shards_dir: str | None = None  # None: <tokenizer>/shards
    text_field: str = "text"  # the JSONL/Parquet/datasets field holding each document's text
    text_mode: str = "file"  # .txt inputs: "file" (a whole file is one document) or "blocks" (blank-line-separated)
    skip_bad: bool = False  # skip (and count) corrupt files and records instead of stopping at the first
    # Tasks (bundled names or task YAML files) whose validation and test texts must not be trained on: training
    # documents sharing a 13-word sequence with them are left out (GPT-3's decontamination; ptlab.data.decontaminate)
    decontaminate: list[str] = field(default_factory=list)
    # Weighted sources instead of train_files, e.g. [{name: web, files: [...], weight: 0.7}, {name: books, ...}]
    mixture: list[MixtureSource] = field(default_factory=list)

    def validate(self) -> None:
        if self.mixture:
            # The default train_files do not count as set, so a base config naming the default corpus can take a
            # mixture; the training text is then the mixture's alone, and the saved config says so.
            _check(self.train_files in ([], DEFAULT_TRAIN_FILES), "data.mixture",
                   "and data.train_files are exclusive; give the files as mixture sources instead")
            self.train_files = []
            for i, source in enumerate(self.mixture):
                source.validate(f"data.mixture[{i}]")
            names = [s.name for s in self.mixture]
            duplicate = next((n for n in names if names.count(n) > 1), None)
            _check(duplicate is None, "data.mixture", f"source name {duplicate!r} is used twice")
        _check(self.tokenizer_kind in ("unigram", "bpe"), "data.tokenizer_kind", "must be 'unigram' or 'bpe'")
        _check(self.separator in ("eos", "none"), "data.separator", "must be 'eos' or 'none'")
        _check(bool(self.text_field), "data.text_field", "must name a field")
        _check(self.text_mode in ("file", "blocks"), "data.text_mode", "must be 'file' or 'blocks'")
        _check(self.num_sentinels >= 0, "data.num_sentinels", "must be >= 0")
        _check(self.vocab_size > self.num_sentinels + 3, "data.vocab_size", "must exceed num_sentinels + 3")
        _check(self.tokenizer_sample_bytes > 0, "data.tokenizer_sample_bytes", "must be positive")
        _check(bool(self.train_files) or bool(self.mixture), "data.train_files", "must name at least one file")


SCHEDULES = ("constant", "cosine", "linear", "inverse_sqrt", "wsd")
OPTIMIZERS = ("adamw", "adamw_scale", "adafactor", "muon", "muon_scale")


LOGGERS = ("tensorboard", "mlflow", "wandb")  # train.loggers, implemented in ptlab.train.loggers
_LOGGER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "ptlab[mlflow]", "wandb": "ptlab[wandb]"}


def check_logger_installed(name: str) -> None:
    """A one-line error when a configured tracker's package is missing, before any work is done."""
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        found = False
    _check(found, "train.loggers", f"{name} is not installed; pip install '{_LOGGER_PACKAGES[name]}'")


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 32  # examples per optimizer step, across all ranks and accumulation steps
    grad_accum: int = 1  # micro-batches per rank and step
    # adamw | adamw_scale (step scaled by each tensor's RMS, as nanoT5) | adafactor | muon (Muon for the hidden
    # matrices, AdamW for embeddings, head, norms and biases) | muon_scale (Muon, and RMS-scaled AdamW for the rest)
    optimizer: str = "adamw"
    lr: float = 1e-3  # the peak learning rate (with muon: of the AdamW part)
    # The embedding tables' peak rate (None: lr): tokens, learned positions and T5's relative-position biases; a tied
    # head shares its embedding's. An untied embedding learns from few rows a step and takes a far higher rate than
    # the rest (modded-nanogpt)
    embedding_lr: float | None = None
    muon_lr: float = 0.02  # muon: the hidden matrices' peak learning rate, before Muon's per-shape adjustment
    muon_momentum: float = 0.95  # muon: Nesterov momentum of the matrices' updates
    # muon: Newton-Schulz iterations a step (torch's 5); each costs about 6 x rows^2 x columns FLOPs a matrix, per
    # step whatever the batch, so at small batches they can cost as much as the model's own step
    muon_ns_steps: int = 5
    schedule: str = "cosine"  # constant | cosine | linear | inverse_sqrt (T5) | wsd (warmup-stable-decay)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine/linear/wsd decay floor, as a fraction of lr
    decay_ratio: float = 0.1  # wsd: the share of steps spent decaying at the end
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    # The LM head and the cross-entropy fused, this many tokens at a time, so the whole batch's logits are never
    # held (`ptlab.models.head_loss`); 0: the whole batch's logits, then the loss; auto: fused from 64k ids in fp32
    # and 128k in bf16, in chunks of 2**24 / vocabulary tokens (256 at least); unfused below, where the unfused
    # step measured faster (`head_loss.FUSE_FROM_ROW_BYTES`, benchmarks/results/memory-cpu.md).
    # On a GPU use thousands of tokens
    loss_chunk_tokens: int | str = "auto"
    # auto: bf16 (autocast) where the device computes it natively (a bf16 GPU; a CPU with AMX or AVX-512 BF16), else
    # fp32, where bf16 matmuls are emulated and slower; validate() replaces auto with the one this machine takes
    precision: str = "auto"  # auto | bf16 | fp32
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    compile: bool | str = "auto"  # torch.compile the model: true, false, or auto (runs long enough to repay it)
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass
    distributed: str = "ddp"  # under torchrun: ddp | fsdp (FSDP2, fully_shard per block)
    eval_every: int = 100
    eval_batches: int = 4
    checkpoint_every: int = 0  # 0: only the final checkpoint (and one on SIGTERM/Ctrl-C)
    keep_checkpoints: int = 3  # the newest K checkpoints are kept
    # Write periodic checkpoints while training goes on (from a host copy of the state: memory for one more copy
    # of weights and optimizer); the final checkpoint is always written before the run ends
    async_checkpoint: bool = False
    max_bad_steps: int = 5  # a non-finite loss skips the step; this many in a row stops the run
    # Loss-spike guard: skip a step whose loss is more than this many standard deviations above the mean of the
    # last `spike_window` steps' losses (OLMo-core's skip-step optimizer); 0 disables it
    spike_sigmas: float = 0.0
    spike_window: int = 64
    # Batch-size warmup: the first `batch_warmup_steps` steps grow the batch linearly from `batch_warmup_start`
    # (a fraction of batch_size) to batch_size; 0 disables it
    batch_warmup_steps: int = 0
    batch_warmup_start: float = 0.25
    log_every: int = 10
    # Experiment trackers beside metrics.jsonl: tensorboard (RUN_DIR/tensorboard) | mlflow | wandb (offline)
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    tensorboard: bool | None = None  # deprecated: true/false adds/removes "tensorboard" in loggers
    experiment: str = ""  # MLflow experiment / W&B project; "": the name of run_dir's parent directory
    run_name: str = ""  # the tracked run's name; "": the name of run_dir
    tracking_uri: str = ""  # MLflow; "": $MLFLOW_TRACKING_URI, else the local file store RUN_DIR/../mlruns
    tags: list[str] = field(default_factory=list)  # tags of the tracked run: "key=value" or a bare word
    peak_tflops: float | None = None  # for MFU; None: the GPU's datasheet bf16 peak, or this CPU's measured one
    threads: int = 0  # torch intra-op threads per process; 0: leave torch's default

    def validate(self) -> None:
        _check(self.max_steps > 0, "train.max_steps", "must be positive")
        _check(self.batch_size > 0, "train.batch_size", "must be positive")
        _check(self.grad_accum > 0, "train.grad_accum", "must be positive")
        _check(self.lr > 0, "train.lr", "must be positive")
        _check(self.embedding_lr is None or (isinstance(self.embedding_lr, (int, float))
                                             and not isinstance(self.embedding_lr, bool) and self.embedding_lr > 0),
               "train.embedding_lr", "must be a positive number (or null: train.lr)")
        _check(self.optimizer in OPTIMIZERS, "train.optimizer",
               f"unknown optimizer {self.optimizer!r} (known: {', '.join(OPTIMIZERS)})")
        _check(self.schedule in SCHEDULES, "train.schedule",
               f"unknown schedule {self.schedule!r} (known: {', '.join(SCHEDULES)})")
        _check(self.precision in ("auto", "bf16", "fp32"), "train.precision", "must be 'auto', 'bf16' or 'fp32'")
        _check(self.device in ("auto", "cpu", "cuda"), "train.device", "must be 'auto', 'cpu' or 'cuda'")
        if self.precision == "auto":  # resolved here, so that the saved config says what the run computed in
            from ptlab.precision import resolve_precision

            self.precision = resolve_precision("auto", self.device)
        _check(self.distributed in ("ddp", "fsdp"), "train.distributed", "must be 'ddp' or 'fsdp'")
        _check(self.compile in (True, False, "auto"), "train.compile", "must be true, false or auto")
        _check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio", "must be in [0, 1]")
        _check(0.0 < self.decay_ratio <= 1.0, "train.decay_ratio", "must be in (0, 1]")
        _check(self.eval_every >= 0, "train.eval_every", "must be >= 0")
        _check(self.eval_batches >= 1, "train.eval_batches", "must be >= 1")
        _check(0.0 <= self.beta1 < 1.0, "train.beta1", "must be in [0, 1)")
        _check(0.0 <= self.beta2 < 1.0, "train.beta2", "must be in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.loss_chunk_tokens == "auto" or (isinstance(self.loss_chunk_tokens, int)
                                                    and self.loss_chunk_tokens >= 0),
               "train.loss_chunk_tokens", "must be auto or an integer >= 0 (0: no chunking)")
        _check(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)")
        _check(self.threads >= 0, "train.threads", "must be >= 0 (0: torch's default)")
        _check(self.peak_tflops is None or self.peak_tflops > 0, "train.peak_tflops", "must be positive")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        _check(self.max_bad_steps >= 1, "train.max_bad_steps", "must be >= 1")
        _check(self.muon_lr > 0, "train.muon_lr", "must be positive")
        _check(0.0 <= self.muon_momentum < 1.0, "train.muon_momentum", "must be in [0, 1)")
        _check(1 <= self.muon_ns_steps < 100, "train.muon_ns_steps", "must be in [1, 99]")
        _check(self.spike_sigmas >= 0, "train.spike_sigmas", "must be >= 0 (0 disables the guard)")
        _check(self.spike_window >= 2, "train.spike_window", "must be >= 2")
        _check(self.batch_warmup_steps >= 0, "train.batch_warmup_steps", "must be >= 0 (0 disables it)")
        _check(0.0 < self.batch_warmup_start <= 1.0, "train.batch_warmup_start", "must be in (0, 1]")
        _check(self.log_every >= 1, "train.log_every", "must be >= 1")
        for name in self.loggers:
            _check(name in LOGGERS, "train.loggers", f"unknown logger {name!r} (known: {', '.join(LOGGERS)})")
        _check(len(set(self.loggers)) == len(self.loggers), "train.loggers", "names a logger twice")
        for name in self.logger_names():
            check_logger_installed(name)
        for tag in self.tags:
            _check(bool(tag.split("=", 1)[0].strip()), "train.tags", f"{tag!r} needs a name before '='")

    def logger_names(self) -> list[str]:
        """`loggers` with the deprecated `tensorboard` switch applied."""
        names = [name for name in self.loggers if name != "tensorboard" or self.tensorboard is not False]
        if self.tensorboard and "tensorboard" not in names:
            names.insert(0, "tensorboard")
        return names


@dataclass
class TaskConfig:
    """A downstream task: a registered `name` (see `ptlab.data.tasks.TASKS`), or a custom one defined by its files,
    input template, target field and metrics. Set keys override a registered task's."""

    name: str = ""
    train: str | None = None  # JSONL or CSV files
    validation: str | None = None
    test: str | None = None
    input_template: str | None = None  # e.g. "review: {text}"; fields of the record in braces
    target_field: str | None = None
    labels: list[str] = field(default_factory=list)  # classification: the label strings (ranked, never generated)
    metrics: list[str] = field(default_factory=list)
    max_train_examples: int = 0  # 0: all
    max_eval_examples: int = 0  # 0: all
    max_input_length: int = 256  # tokens
    max_target_length: int = 64
    # Prompting (`ptlab evaluate --shots K`), apart from the fine-tuning format: e.g. "Review: {text}\nSentiment:"
    # and each label's words, {positive: " positive", negative: " negative"}. None/empty: the task's defaults.
    prompt: str | None = None
    verbalizer: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        _check(bool(self.name) or bool(self.train), "task", "needs a registered name or at least task.train")
        _check(self.max_input_length >= 4 and self.max_target_length >= 2, "task.max_input_length",
               "lengths are too short")
        _check(self.max_train_examples >= 0 and self.max_eval_examples >= 0, "task.max_train_examples",
               "example caps must be >= 0 (0: all)")


@dataclass
class FinetuneConfig:
    """`ptlab finetune`: fine-tune a pre-trained checkpoint (`init`) or a fresh model (`init: none`, architecture
    from `model`, tokenizer from `tokenizer`) on `task`, with early stopping on the task's first metric."""

    run_dir: str = "runs/finetune"
    seed: int = 0
    init: str = "none"  # a checkpoint or run directory, or "none" to train from scratch
    tokenizer: str | None = None  # a tokenizer directory (init: none only)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=32, lr=1e-3, warmup_steps=50,
                                                                   eval_every=100, loggers=[]))
    epochs: float = 3.0
    max_steps: int = 0  # optimizer steps; 0: as many as `epochs` take (train.max_steps is not used here)
    patience: int = 3  # stop after this many evaluations without a better validation score

    def validate(self) -> None:
        self.task.validate()
        _check(self.init != "none" or bool(self.tokenizer), "tokenizer",
               "a model trained from scratch (init: none) needs a tokenizer directory")
        if self.init == "none":
            self.model.validate()
        check_seed(self.seed, "config key 'seed'")
        _check(self.patience >= 1, "patience", "must be >= 1")
        _check(self.epochs > 0, "epochs", "must be positive")
        _check(self.max_steps >= 0, "max_steps", "must be >= 0 (0: train for `epochs`)")
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Config:
    run_dir: str = "runs/default"
    seed: int = 0
    # Continued pre-training: start from this ptlab checkpoint or run directory, or Hugging Face model directory
    # (its model and tokenizer; the optimizer and schedule start afresh). None: from random weights.
    init: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        check_seed(self.seed, "config key 'seed'")
        for section in (self.model, self.objective, self.data, self.train):
            section.validate()
        if self.init is not None:
            # a data.tokenizer set beside init must be the init's own tokenizer: that needs both tokenizers' files,
            # so it is checked when the run starts (ptlab.train.continued.prepare_init)
            _check(bool(self.init.strip()), "init", "must name a checkpoint, run or Hugging Face directory")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["objective"] = self.objective.to_dict()
        return out


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise PtlabError(f"config key '{key}': {message}")


MAX_SEED = 2**63 - 1  # numpy and torch both take seeds in [0, 2**63)


def seed_problem(seed: object) -> str | None:
    """What keeps `seed` from being a seed numpy and torch both take ("must be in [0, 2**63), got -1"), or None:
    the one check behind the `seed` config keys, the command line's --seed and the Python functions taking a seed."""
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):  # an int or a numpy integer, not 1.5 or True
        return f"must be an integer in [0, 2**63), got {seed!r}"
    if not 0 <= operator.index(seed) <= MAX_SEED:
        return f"must be in [0, 2**63), got {seed}"
    return None


def check_seed(seed: object, name: str = "seed") -> int:
    """`seed` as an int, or a one-line PtlabError naming `name` when numpy or torch would refuse it (numpy's own
    error for a negative seed is a ValueError from deep inside, after any work done before drawing)."""
    problem = seed_problem(seed)
    if problem is not None:
        raise PtlabError(f"{name}: {problem}")
    return operator.index(seed)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = None) -> Any:
    """Read a YAML config (or start from defaults when path is None), apply `key=value` overrides, validate.
    `cls` is the config class (default `Config`; `FinetuneConfig` for fine-tuning)."""
    cls = cls or Config
    data = read_yaml(path) if path is not None else {}
    file_objective = dict(data.get("objective") or {}) if isinstance(data.get("objective"), dict) else {}
    apply_overrides(data, overrides)
    config = from_dict(cls, data, "")
    switched = cls is Config and "name" in file_objective and config.objective.name != file_objective["name"]
    if switched:  # parameters the file gave its own objective: keep only those overridden on the command line
        overridden = {k.strip().split(".", 1)[1] for k, _, _ in (o.partition("=") for o in overrides or [])
                      if k.strip().startswith("objective.")}
        objective = config.objective
        objective.inherited = {k: v for k, v in objective.params.items() if k not in overridden}
        objective.params = {k: v for k, v in objective.params.items() if k in overridden}
    config.validate()
    return config


def config_from_dict(data: dict[str, Any]) -> Config:
    config = from_dict(Config, data, "")
    config.validate()
    return config


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
