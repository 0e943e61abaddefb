"""The training recipe: one typed schema, YAML files holding only values.

A recipe file may start with `extends: other.yaml` (a path relative to it): the base is read
first and the file's mappings are merged over it, key by key; lists and scalars replace.
`--set training.max_steps=50` overrides any field after that, the value read as YAML.

    countrytune train recipes/id/tiny-cpu.yaml --set training.max_steps=20
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from countrytune.errors import UserError
from countrytune.schema import Schema, read_yaml, validate
from countrytune.artifacts.recipe_kernels import KernelsConfig


class TinyModelSpec(Schema):
    """A small model built on the fly from a config (no weights can be downloaded here)."""

    architecture: Literal["llama", "qwen2", "gemma"] = "llama"
    """Which Hugging Face architecture's config to build."""
    hidden_size: int = Field(128, ge=8)
    """Width of the residual stream."""
    num_layers: int = Field(2, ge=1)
    """Number of decoder layers."""
    num_heads: int = Field(4, ge=1)
    """Attention heads."""
    num_kv_heads: int = Field(2, ge=1)
    """Key/value heads (grouped-query attention when fewer than num_heads)."""
    intermediate_size: int = Field(344, ge=8)
    """Width of the MLP."""
    seed: int = 0
    """Seed of the random initialisation."""


class ModelSpec(Schema):
    """The base model: a local directory or hub id, or a tiny model built on the fly."""

    name_or_path: str | None = None
    """Local directory, Hugging Face hub id, or a base package in a registry,
    `registry://country/name:version` (pulled once per machine, verified against its manifest,
    and named in the adapter's manifest so deployment pulls the same bytes); loaded with
    AutoModelForCausalLM (safetensors only)."""
    registry: str | None = None
    """The registry of a `registry://` base (a directory, file:// or oci://); default
    $COUNTRYTUNE_REGISTRY, else ./registry. Unused for other bases (so `--set
    model.name_or_path=DIR` on a recipe that names a registry base just works)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin; recorded in the run's lineage."""
    tiny: TinyModelSpec | None = None
    """Build this tiny model instead of loading one (demo and tests)."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Weights and compute precision; auto is bf16 on GPU, fp32 on CPU."""
    attn_implementation: Literal["auto", "varlen", "sdpa", "flash_attention_2", "eager"] = "auto"
    """Attention kernel. auto: on a GPU flash_attention_2 when installed, else varlen (torch's own
    varlen FlashAttention over the packed documents, pipeline/training/attention.py) in bf16/fp16, else
    sdpa; sdpa on the CPU. sdpa and eager keep packed documents apart with a dense block-diagonal
    mask; varlen and flash_attention_2 with the documents' boundaries."""
    trust_remote_code: bool = False
    """Allow model code from the hub; off unless you have read that code."""
    random_weights: bool = False
    """Build the architecture name_or_path's config.json describes with random weights (seeded
    by the recipe's seed), in the model dtype, directly on the training device, instead of
    loading its weights: speed and memory of a real model's shape where its weights are not at
    hand (bench/shapes/, bench/gpu.sh). Nothing trained on it can be exported."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.name_or_path is None) == (self.tiny is None):
            raise ValueError("set exactly one of model.name_or_path and model.tiny")
        if self.random_weights and self.name_or_path is None:
            raise ValueError("model.random_weights builds the config at model.name_or_path; set it")
        in_registry = (self.name_or_path or "").startswith("registry://")
        if in_registry and self.revision is not None:
            raise ValueError("model.revision pins a hub model; a registry:// base names its version")
        return self


class TokenizerSpec(Schema):
    """Where the tokenizer comes from."""

    name_or_path: str | None = None
    """Local directory or hub id; default: the base model's."""
    train_vocab_size: int | None = Field(None, ge=64)
    """Train a byte-level BPE of this size on the training text instead (model.tiny or
    model.random_weights only: a pretrained model comes with its tokenizer)."""
    chat_template: str | None = None
    """A Jinja chat template replacing the tokenizer's own (SFT on tokenizers without one)."""
    trust_remote_code: bool = False
    """Allow code from the hub for a tokenizer named here (the model's own tokenizer follows
    model.trust_remote_code)."""


class DataSource(Schema):
    """One input: a `countrytune prep` output directory, or Parquet/JSONL files."""

    path: str
    """Prep output dir (its data/*.parquet are read), a file, a directory or a glob."""
    text_field: str = "text"
    """Column holding the text (task cpt)."""
    messages_field: str = "messages"
    """Column holding the conversation, a list of {role, content} (task sft)."""
    lang_field: str = "lang"
    """Column holding the ISO 639-3 language code."""
    lang: str | None = None
    """Language of every record, for sources without a language column."""
    weight: float | None = Field(None, gt=0)
    """Share of the documents drawn that come from this source (normalised over the sources;
    e.g. curated 3, web 1, English replay 1); within a source, languages follow
    data.language_weights or data.temperature. Give every source a weight, or none (then
    documents are drawn by language across all sources)."""


class DataSpec(Schema):
    """Training and held-out data."""

    sources: list[DataSource] = Field(min_length=1)
    """Inputs, read in order."""
    language_weights: dict[str, float] | None = None
    """Share of training documents per language (normalised); languages not listed are left out.
    None: the natural shares, reshaped by `temperature`."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature over languages when no weights are given: share ∝ n_docs^(1/T).
    1 keeps natural shares; larger values lift small languages."""
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    """Fraction of each language's documents held out for evaluation (chosen by a hash of the
    document id, so it is the same in every run)."""
    eval_max_docs_per_language: int = Field(64, ge=0)
    """Upper bound on held-out documents per language."""
    cache_dir: str | None = None
    """Tokenised-data cache; default $COUNTRYTUNE_CACHE or ~/.cache/countrytune/tokenized."""

    @model_validator(mode="after")
    def _weights_for_all_sources_or_none(self) -> DataSpec:
        given = [s.weight is not None for s in self.sources]
        if any(given) and not all(given):
            missing = [s.path for s in self.sources if s.weight is None]
            raise ValueError(f"data.sources: give every source a weight, or none (no weight: {missing})")
        return self


class LoraSpec(Schema):
    """The adapter: peft LoRA settings."""

    r: int = Field(16, ge=1)
    """Rank."""
    alpha: float = 32
    """Scaling numerator: the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA branch input; 0 keeps the fused LoRA kernels usable."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt, or every linear layer but the output head."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha/sqrt(r)."""
    use_dora: bool = False
    """Weight-decomposed LoRA; vLLM cannot serve DoRA adapters."""
    init_from: str | None = None
    """Start from this adapter's weights instead of a fresh LoRA (a peft adapter folder: RUN/adapter
    of an SFT run, or a pulled package); its rank, alpha and target modules must be the
    recipe's. `task: dpo` starts from the SFT adapter this way (its reference: see
    preference.reference). Recorded in run.json with its weights' SHA-256."""
    train_new_tokens: bool = False
    """Also train the embedding rows (and the tied or separate output rows) of the tokens
    `countrytune tokenizer extend` added to the base, read from its
    vocabulary_extension.json (peft trainable tokens). vLLM serves no adapter that carries
    token rows: merge the result into a country base with `countrytune export --as-base`, then
    train plain LoRAs on that base."""


class OptimSpec(Schema):
    """Optimiser and learning-rate schedule."""

    lr: float = Field(2e-4, gt=0)
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm; 0 disables."""
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    """Decay after warm-up. wsd (warm-up, stable, decay): the peak rate until the last
    `decay_fraction` of the steps, then down to min_lr_ratio along 1 - sqrt(progress) (Hägele
    et al. 2024); a stable-phase checkpoint can be continued with more data, then decayed."""
    decay_fraction: float = Field(0.2, gt=0, le=1)
    """wsd: share of max_steps spent decaying."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up from 0, in optimiser steps."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final learning rate as a fraction of the peak (cosine and linear)."""


class TrainingSpec(Schema):
    """Sizes and cadence of the loop."""

    max_steps: int = Field(ge=1)
    """Optimiser steps."""
    sequence_length: int = Field(2048, ge=8)
    """Tokens per row."""
    packing: bool = True
    """Pack documents into full rows (attention kept within each document); otherwise one
    document per row, truncated, padding ignored by the loss."""
    micro_batch_size: int = Field(1, ge=1)
    """Rows per process per forward pass."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """Micro-batches per optimiser step. The loss is divided by the target tokens of the whole
    step across accumulation and processes, so 1x8 and 8x1 give the same update."""
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    """Recompute activations in backward to save memory. auto: measure one forward's
    activations and recompute only as many layers as the device cannot hold
    (pipeline/training/activation_memory.py); true: every layer; false: none."""
    activation_memory_gib: float | None = Field(None, gt=0)
    """With gradient_checkpointing auto: the memory per device the activations may take
    (default: what the device has free once the model is on it)."""
    compile: bool = False
    """torch.compile each decoder layer (regional compilation: the layers share one compiled
    graph). The first steps pay the compilation."""
    eval_every: int = Field(0, ge=0)
    """Evaluate every N steps (0: only at the end)."""
    save_every: int = Field(0, ge=0)
    """Checkpoint every N steps (0: only the final adapter)."""
    log_every: int = Field(10, ge=1)
    """Log loss, learning rate and tokens/s every N steps."""
    keep_checkpoints: int = Field(2, ge=1)
    """Complete checkpoints kept; older ones are deleted."""


class WandbSpec(Schema):
    """Weights & Biases settings."""

    project: str = "countrytune"
    """Project name."""
    entity: str | None = None
    """Team or user."""
    base_url: str | None = None
    """A self-hosted server URL (sets WANDB_BASE_URL)."""
    mode: Literal["auto", "online", "offline"] = "auto"
    """auto: online when WANDB_API_KEY is set, else offline (sync later with `wandb sync`)."""


class TrackingSpec(Schema):
    """Experiment trackers."""

    trackers: list[Literal["wandb", "tensorboard"]] = Field(default_factory=list)
    """Trackers to log to; metrics always go to metrics.jsonl in the run directory too."""
    wandb: WandbSpec = WandbSpec()
    """wandb settings."""


class DeepSpeedSpec(Schema):
    """DeepSpeed ZeRO, rendered into a DeepSpeed config by pipeline.training.deepspeed_config."""

    stage: Literal[2, 3]
    """ZeRO stage: 2 partitions optimiser state and gradients, 3 also parameters."""
    offload_optimizer: bool = False
    """Keep optimiser state in CPU memory."""
    offload_params: bool = False
    """Keep parameters in CPU memory (stage 3 only)."""
    reduce_bucket_size: int = Field(50_000_000, ge=1)
    """Elements per gradient reduce bucket."""
    stage3_prefetch_bucket_size: int = Field(50_000_000, ge=1)
    """Elements prefetched ahead of use (stage 3)."""
    overlap_comm: bool = True
    """Overlap gradient reduction with backward."""

    @model_validator(mode="after")
    def _offload_params_needs_stage3(self) -> DeepSpeedSpec:
        if self.offload_params and self.stage != 3:
            raise ValueError("offload_params needs stage 3")
        return self


class PreferenceSpec(Schema):
    """Preference tuning (`task: dpo`): Direct Preference Optimization (Rafailov et al., 2023)
    on chosen/rejected answer pairs (`countrytune preference-pairs`), in the same loop as CPT
    and SFT. The reference is scored inside the same forward as the policy, on the same base
    weights: no second copy of the model in memory."""

    reference: Literal["initial", "base"] = "initial"
    """initial: the model the run starts from, as DPO defines it: the base with lora.init_from's
    adapter, kept as a frozen second LoRA (a few MB) beside the one training, so that pairs start
    at margin 0 and beta holds the adapter near the SFT model. base: the base with the adapter
    switched off, holding the adapter near the base the country started from (the same as
    initial when there is no lora.init_from)."""
    beta: float = Field(0.1, gt=0)
    """Strength of the pull towards the reference: the implicit reward is beta x (log-ratio
    of policy to reference); smaller lets the adapter move further."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Conservative DPO: the share of pairs assumed mislabelled (0: plain DPO)."""
    chosen_nll: float = Field(0.0, ge=0)
    """Weight of the chosen answer's negative log-likelihood per target token, added to each
    pair's loss (DPO + NLL: Pang et al., 2024, "RPO"; Llama 3). DPO alone only widens the gap,
    and can make both answers less likely; this keeps the chosen one likely, which matters where
    the chosen side is the task's reference rather than a sample. 0: plain DPO."""


class EvaluationSpec(Schema):
    """Held-out evaluation of the base before step 1 and of the adapter after the last step,
    through lm-evaluation-harness (`countrytune eval` runs the same on saved models)."""

    suite: str | None = None
    """Held-out suite YAML (e.g. recipes/id/heldout.yaml); none: no held-out evaluation."""
    before_and_after: bool | None = None
    """Score base and adapter; default: on when a suite is set and the base is a real model
    (off for `model.tiny`, whose scores mean nothing)."""
    tasks: list[str] | None = None
    """Tasks of the suite to run (default: all)."""
    languages: list[str] | None = None
    """Languages to score (default: all the suite has)."""
    max_docs_per_language: int | None = Field(None, ge=1)
    """Cap on records per set, for quick runs (default: the suite's)."""
    batch_size: int = Field(8, ge=1)
    """Sequences per forward pass while scoring."""

    @model_validator(mode="after")
    def _suite_when_on(self) -> EvaluationSpec:
        if self.before_and_after and self.suite is None:
            raise ValueError("evaluation.before_and_after needs evaluation.suite")
        return self

    def active(self, tiny_base: bool) -> bool:
        if self.before_and_after is None:
            return self.suite is not None and not tiny_base
        return self.before_and_after


class TrainRecipe(Schema):
    """A training recipe: LoRA (the default) or full-parameter continued pretraining."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    """Adapter name (registry entry `<country>/<name>`)."""
    country: str
    """Country profile code (recipes/countries/<code>.yaml) or path."""
    task: Literal["cpt", "sft", "dpo"]
    """cpt: continued pretraining on plain text; sft: chat data, loss on assistant tokens only;
    dpo: preference pairs (`countrytune preference-pairs`), the DPO loss on each pair's two
    answers against the base (the `preference` section)."""
    method: Literal["lora", "full"] = "lora"
    """lora: train a peft LoRA adapter on the frozen base (the `lora` section); full: train
    every weight (full-parameter continued pretraining, as SEA-LION, Sailor and Sahabat-AI
    did), normally under DeepSpeed ZeRO-3 with `offload_optimizer` when the optimiser state
    outgrows the accelerators. A full run writes RUN/model (a complete Hugging Face model) and
    is exported as a country base: `countrytune export RUN --as-base`."""
    data: DataSpec
    """Inputs and held-out split."""
    model: ModelSpec
    """Base model."""
    tokenizer: TokenizerSpec = TokenizerSpec()
    """Tokenizer (default: the base model's)."""
    lora: LoraSpec = LoraSpec()
    """Adapter settings."""
    optim: OptimSpec = OptimSpec()
    """Optimiser and schedule."""
    training: TrainingSpec
    """Loop sizes and cadence."""
    tracking: TrackingSpec = TrackingSpec()
    """Trackers."""
    deepspeed: DeepSpeedSpec | None = None
    """DeepSpeed ZeRO; None: plain DDP (or one process)."""
    preference: PreferenceSpec = PreferenceSpec()
    """DPO settings (task: dpo)."""
    evaluation: EvaluationSpec = EvaluationSpec()
    """Held-out evaluation, base against adapter (the table export puts in the model card)."""
    kernels: KernelsConfig = KernelsConfig()
    """Fused kernels on the hot path (PyTorch reference when off or on CPU)."""
    seed: int = 0
    """Seed of data order, LoRA initialisation and dropout."""

    @property
    def dpo_reference_is_initial_adapter(self) -> bool:
        """task dpo from lora.init_from with preference.reference initial: the run holds a frozen
        copy of the starting adapter as its reference (otherwise the reference is the base)."""
        return self.task == "dpo" and bool(self.lora.init_from) and self.preference.reference == "initial"

    @model_validator(mode="after")
    def _new_tokens_need_the_plain_head(self) -> TrainRecipe:
        if self.lora.train_new_tokens and self.kernels.fused_linear_cross_entropy:
            raise ValueError("lora.train_new_tokens trains rows of the output head, which the fused "
                             "cross-entropy reads as a plain weight; set kernels.fused_linear_cross_entropy: false")
        return self

    @model_validator(mode="after")
    def _dpo_needs_an_adapter_and_answer_scores(self) -> TrainRecipe:
        if self.task != "dpo":
            return self
        if self.method == "full":
            raise ValueError("task: dpo scores the reference as the base with the adapter switched off; "
                             "method: full has no adapter (use method: lora)")
        if self.kernels.fused_linear_cross_entropy:
            raise ValueError("task: dpo needs each answer's log-probability, which the fused "
                             "cross-entropy (a sum over the batch) does not give; set "
                             "kernels.fused_linear_cross_entropy: false")
        if self.lora.train_new_tokens:
            raise ValueError("task: dpo trains LoRA weights only; drop lora.train_new_tokens")
        return self

    @model_validator(mode="after")
    def _full_has_no_adapter(self) -> TrainRecipe:
        if self.method == "full":
            if self.lora.train_new_tokens:
                raise ValueError("method: full already trains every embedding row; drop lora.train_new_tokens")
            if self.kernels.lora:
                raise ValueError("method: full has no LoRA layers to fuse; set kernels.lora: false")
            if self.lora.init_from:
                raise ValueError("method: full starts from the base's weights; drop lora.init_from")
        return self


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_with_extends(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise UserError(f"{path}: `extends` loops back to itself")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return _merge(_read_with_extends(path.parent / parent, (*seen, path)), data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` strings (value parsed as YAML) to a recipe mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key=value, e.g. training.max_steps=100")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise UserError(f"--set {item!r}: value is not valid YAML: {e}") from None
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"--set {item!r}: {part} is not a mapping")
            node = child
        node[parts[-1]] = value
    return data


def load_recipe(path: str | Path, overrides: list[str] = ()) -> TrainRecipe:
    """Read a recipe file (following `extends`), apply `--set` overrides and validate."""
    data = apply_overrides(_read_with_extends(Path(path)), list(overrides))
    return validate(TrainRecipe, data, str(path))


def recipe_to_yaml(recipe: TrainRecipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def recipe_sha256(recipe: TrainRecipe) -> str:
    """The recipe's identity: what it sets, defaults left out, so a recipe saved by an older
    countrytune (before a field with a default existed) still hashes as it did when trained."""
    canonical = json.dumps(recipe.model_dump(mode="json", exclude_defaults=True), sort_keys=True,
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
