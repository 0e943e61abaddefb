"""Builders: the recipe's parts in, the objects the loop uses out, in the order train.py needs
them (accelerator, tokenizer, base model check, model with its adapter, optimiser, schedule).
Each component has one builder that owns it."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from countrytune.artifacts.vocabulary_extension import RECORD_NAME, read_extension
from countrytune.atomic import atomic_dir
from countrytune.errors import UserError
from pipeline.training import data as data_mod
from pipeline.training.activation_memory import decoder_layers, set_recomputed_layers
from pipeline.training.model import (
    add_lora,
    attn_implementation,
    build_random_model,
    build_tiny_model,
    load_base_model,
    model_dtype,
)
from countrytune.artifacts.recipe import OptimSpec, TrainRecipe
from countrytune.hf_models import load_tokenizer
from pipeline.training.tokenizer import train_tokenizer
from pipeline.training.preference_loss import REFERENCE_ADAPTER
from pipeline.training.trained_weights import AdapterWeights, FullWeights


def on_gpu() -> bool:
    return torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "") not in ("1", "true")


def _fill_auto(config: dict, recipe: TrainRecipe, bf16: bool) -> dict:
    """Values a launcher's DeepSpeed file leaves as "auto", taken from the recipe (accelerate
    would take them from a prepared data loader, which this loop does not use)."""
    t = recipe.training
    fills = {"train_micro_batch_size_per_gpu": t.micro_batch_size,
             "gradient_accumulation_steps": t.gradient_accumulation_steps,
             "gradient_clipping": recipe.optim.max_grad_norm}
    for key, value in fills.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    config.pop("train_batch_size", None)  # accelerate computes it with the world size
    for key in ("bf16", "fp16"):
        if isinstance(config.get(key), dict) and config[key].get("enabled") == "auto":
            config[key]["enabled"] = bf16 if key == "bf16" else False
    return config


def make_accelerator(recipe: TrainRecipe):
    """accelerate for devices and processes; DeepSpeed when the recipe (or launcher) asks.

    On CPU the process group must be gloo: accelerate's DeepSpeed path otherwise fails on
    CPU with a misleading batch-size error about train_batch_size.
    """
    from datetime import timedelta

    from accelerate import Accelerator, DeepSpeedPlugin
    from accelerate.utils import InitProcessGroupKwargs

    gpu = on_gpu()
    bf16 = model_dtype(recipe.model, gpu) == torch.bfloat16
    plugin = None
    if recipe.deepspeed is not None:
        from pipeline.training.deepspeed_config import render

        plugin = DeepSpeedPlugin(hf_ds_config=render(recipe.deepspeed, recipe, bf16=bf16))
    elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        plugin = DeepSpeedPlugin()  # the launcher's config file
        _fill_auto(plugin.hf_ds_config.config, recipe, bf16)
    if plugin is not None and not gpu:
        # ACCELERATE_USE_CPU (what makes multi-process CPU launches work at all) also turns
        # DeepSpeed off inside accelerate; DeepSpeed finds its CPU accelerator by itself.
        os.environ.pop("ACCELERATE_USE_CPU", None)
    handlers = []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by accelerate/torchrun/srun
        # A long first tokenisation on the local main process must not time out the others.
        handlers.append(InitProcessGroupKwargs(backend="nccl" if gpu else "gloo",
                                               timeout=timedelta(hours=2)))
    return Accelerator(
        gradient_accumulation_steps=recipe.training.gradient_accumulation_steps,
        mixed_precision="bf16" if bf16 else "no", deepspeed_plugin=plugin,
        # cpu=True would switch DeepSpeed off; with a DeepSpeed plugin and no GPU, DeepSpeed
        # picks its CPU accelerator itself.
        kwargs_handlers=handlers, cpu=not gpu and plugin is None)


def _training_texts(recipe: TrainRecipe, limit_chars: int = 50_000_000):
    """Texts to train a tokenizer on: the training sources, up to a character budget."""
    used = 0
    for source in recipe.data.sources:
        for path in data_mod.source_files(source):
            for rec in data_mod._records(path):
                if recipe.task == "cpt":
                    text = rec.get(source.text_field) or ""
                elif recipe.task == "dpo":
                    turns = [*(rec.get("prompt") or []), {"content": rec.get("chosen") or ""},
                             {"content": rec.get("rejected") or ""}]
                    text = "\n".join(str(m.get("content", "")) for m in turns if isinstance(m, dict))
                else:
                    text = "\n".join(m.get("content", "") for m in rec.get(source.messages_field) or [])
                used += len(text)
                yield text
                if used >= limit_chars:
                    return


def setup_tokenizer(recipe: TrainRecipe, run_dir: Path, accelerator):
    """The recipe's tokenizer; a trained one is built once (main process) into the run dir."""
    tok_spec = recipe.tokenizer
    if tok_spec.train_vocab_size is not None:
        if recipe.model.tiny is None and not recipe.model.random_weights:
            raise UserError("tokenizer.train_vocab_size needs model.tiny or model.random_weights: "
                            "a pretrained model comes with its tokenizer")
        path = run_dir / "tokenizer"
        with accelerator.main_process_first():
            if accelerator.is_main_process and not (path / "tokenizer.json").exists():
                with atomic_dir(path) as tmp:  # a kill mid-write leaves no truncated tokenizer
                    train_tokenizer(_training_texts(recipe), tok_spec.train_vocab_size, tmp)
        return load_tokenizer(str(path), None, tok_spec.chat_template)
    name = tok_spec.name_or_path or recipe.model.name_or_path
    if name is None:
        raise UserError("set tokenizer.name_or_path or tokenizer.train_vocab_size for a tiny model")
    own = tok_spec.name_or_path is None  # the model's own tokenizer, or one named apart
    revision = recipe.model.revision if own else None
    # Trust in remote code goes no further than the recipe says: the model's trust covers
    # its own tokenizer; a separately named one needs tokenizer.trust_remote_code.
    trust = recipe.model.trust_remote_code if own else tok_spec.trust_remote_code
    return load_tokenizer(name, revision, tok_spec.chat_template, trust)


def check_base_model(recipe: TrainRecipe, tokenizer) -> None:
    """What loading the base will need, checked before any data work (tokenising a real corpus
    takes hours; a model folder without safetensors weights should fail in seconds)."""
    spec = recipe.model
    if spec.tiny is not None:
        t = spec.tiny
        check_rows_fit(recipe, layers=t.num_layers, hidden=t.hidden_size, vocab=len(tokenizer),
                       positions=None)
        return
    from transformers import AutoConfig

    path = Path(spec.name_or_path)
    if path.is_dir() and not spec.random_weights:
        if not (path / "config.json").is_file():
            raise UserError(f"model {path}: no config.json; is this a Hugging Face model directory? "
                            f"(GGUF files are imported first: countrytune model import gguf FILE --to DIR)")
        if not (list(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()):
            found = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf"))
            raise UserError(f"model {path}: no safetensors weights (found: {', '.join(found) or 'none'}); "
                            f"countrytune never unpickles .bin files: convert them to safetensors, "
                            f"or import a GGUF with `countrytune model import gguf`")
    try:
        config = AutoConfig.from_pretrained(spec.name_or_path, revision=spec.revision,
                                            trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the config of model {spec.name_or_path!r}: {e}") from None
    text = getattr(config, "text_config", None) or config
    vocab = getattr(text, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise UserError(f"tokenizer has {len(tokenizer)} tokens but model {spec.name_or_path} has "
                        f"{vocab} embedding rows: new vocabulary needs a new country base model "
                        f"(README: export), not a LoRA")
    check_rows_fit(recipe, layers=text.num_hidden_layers, hidden=text.hidden_size,
                   vocab=vocab or len(tokenizer), positions=getattr(text, "max_position_embeddings", None),
                   model=spec.name_or_path)


def check_rows_fit(recipe: TrainRecipe, *, layers: int, hidden: int, vocab: int, positions: int | None,
                   model: str = "the tiny model") -> None:
    """Refuse rows the model cannot place or the device cannot hold, in seconds rather than after
    an hour of tokenising (issue 24: sequence_length 1e9 was OOM-killed at 22 GB). The memory
    bound is a floor: every layer recomputed, only each layer's input kept, plus one layer's
    work and, without the fused loss, the fp32 logits and their gradient."""
    t = recipe.training
    if positions is not None and t.sequence_length > positions:
        raise UserError(f"training.sequence_length {t.sequence_length:,} is beyond the {positions:,} "
                        f"positions {model} was trained for (max_position_embeddings); use at most "
                        f"that, or a base made for longer context")
    tokens = t.micro_batch_size * t.sequence_length
    dtype_bytes = 2 if on_gpu() and recipe.model.dtype != "fp32" else 4
    floor = tokens * hidden * dtype_bytes * (layers + 10)
    if not recipe.kernels.fused_linear_cross_entropy:
        floor += tokens * vocab * 4 * 2
    if on_gpu():
        have, where = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory, "the GPU"
    else:
        import psutil

        have, where = psutil.virtual_memory().total, "this machine's memory"
    if floor > have:
        raise UserError(f"training.sequence_length {t.sequence_length:,} x micro_batch_size "
                        f"{t.micro_batch_size} = {tokens:,} tokens per forward needs at least "
                        f"{floor / 2**30:,.1f} GiB of activations even recomputing every layer, more "
                        f"than {where} has ({have / 2**30:,.1f} GiB); use shorter rows or a smaller "
                        f"micro-batch (gradient_accumulation_steps keeps the batch)")


def setup_model(recipe: TrainRecipe, run_dir: Path, tokenizer, accelerator):
    """Base model (a tiny one is written to run_dir/base_model first), then what trains on it:
    a LoRA adapter, or every weight (method: full). Returns (trained weights, base path)."""
    gpu = on_gpu()
    spec = recipe.model
    path = spec.name_or_path
    if spec.tiny is not None:
        path = str(run_dir / "base_model")
        with accelerator.main_process_first():
            if accelerator.is_main_process and not (run_dir / "base_model" / "config.json").exists():
                with atomic_dir(run_dir / "base_model") as tmp:
                    build_tiny_model(spec.tiny, len(tokenizer), recipe.training.sequence_length,
                                     tmp, bos_id=tokenizer.bos_token_id,
                                     eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    dtype = model_dtype(spec, gpu)
    attn = attn_implementation(spec, gpu, dtype)

    def load():
        if spec.random_weights:
            return build_random_model(path, spec, dtype=dtype, attn=attn, device=accelerator.device,
                                      seed=recipe.seed)
        return load_base_model(path, spec, dtype=dtype, attn=attn)

    model = load()
    # config.vocab_size, not the embedding's shape: under ZeRO-3 the weight is partitioned.
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(f"tokenizer has {len(tokenizer)} tokens but the model's embedding has "
                        f"{model.config.vocab_size} rows: new vocabulary "
                        "needs a new country base model, not a LoRA")
    if recipe.training.gradient_checkpointing is True:  # auto decides once the model is on its device
        set_recomputed_layers(model, len(decoder_layers(model)))
    if recipe.method == "full":
        model.requires_grad_(True)
        return FullWeights(model, path, reload_base=load), path
    tokens = _new_token_ids(path) if recipe.lora.train_new_tokens else None
    peft_model = add_lora(model, recipe.lora, recipe.seed, tokens)
    if recipe.lora.init_from:
        load_initial_adapter(peft_model, Path(recipe.lora.init_from))
        if recipe.dpo_reference_is_initial_adapter:
            add_reference_adapter(peft_model, Path(recipe.lora.init_from))
    return AdapterWeights(peft_model), path


def load_initial_adapter(peft_model, folder: Path) -> None:
    """lora.init_from: the fresh adapter takes that adapter's weights, which must fit it whole
    (same rank, alpha, target modules): an adapter that fits in part would train from a
    silently different start."""
    import json

    from peft import set_peft_model_state_dict

    weights, config = folder / "adapter_model.safetensors", folder / "adapter_config.json"
    if not (weights.is_file() and config.is_file()):
        raise UserError(f"lora.init_from: {folder} is not a peft adapter folder (adapter_config.json and "
                        f"adapter_model.safetensors); give an SFT run's RUN/adapter or a pulled package")
    theirs = json.loads(config.read_text(encoding="utf-8"))
    ours = peft_model.peft_config["default"]
    for key, mine in (("r", ours.r), ("lora_alpha", ours.lora_alpha), ("use_rslora", ours.use_rslora),
                      ("use_dora", ours.use_dora)):
        if theirs.get(key, mine) != mine:
            raise UserError(f"lora.init_from: {folder} has {key} {theirs.get(key)!r}, the recipe "
                            f"{mine!r}; set the recipe's lora section to the adapter's")
    result = set_peft_model_state_dict(peft_model, _adapter_weights(folder))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise UserError(f"lora.init_from: {folder} does not fit the recipe's LoRA: "
                        f"{len(missing)} of its layers missing (e.g. {missing[:2]}), "
                        f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]}); "
                        f"set lora.target_modules to the adapter's ({theirs.get('target_modules')})")


def add_reference_adapter(peft_model, folder: Path) -> None:
    """preference.reference initial: lora.init_from's weights a second time, as a frozen adapter
    named REFERENCE_ADAPTER that the preference loss switches to for its reference pass (the
    base is shared; only the LoRA matrices are copied). No dropout: the reference is one fixed
    model, also while the module trains. Call after load_initial_adapter has checked the fit."""
    import copy

    from peft import set_peft_model_state_dict

    config = copy.deepcopy(peft_model.peft_config["default"])
    config.lora_dropout, config.inference_mode = 0.0, True
    peft_model.add_adapter(REFERENCE_ADAPTER, config)
    set_peft_model_state_dict(peft_model, _adapter_weights(folder), adapter_name=REFERENCE_ADAPTER)
    for name, p in peft_model.named_parameters():
        if f".{REFERENCE_ADAPTER}." in name:
            p.requires_grad_(False)
    if peft_model.active_adapters != ["default"]:
        raise RuntimeError(f"adding the reference adapter changed the active ones to {peft_model.active_adapters}")


def _adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _new_token_ids(base_path: str) -> list[int]:
    """Ids of the tokens `tokenizer extend` added to the base (lora.train_new_tokens)."""
    record = read_extension(base_path) if Path(base_path).is_dir() else None
    if record is None:
        raise UserError(f"lora.train_new_tokens: {base_path} has no {RECORD_NAME}; it trains "
                        f"the rows of tokens added by `countrytune tokenizer extend` (README: country base)")
    return record.new_ids()


def make_optimizer(model, spec: OptimSpec):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": spec.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=spec.lr, betas=spec.betas,
                             eps=spec.eps)


def make_scheduler(optimizer, spec: OptimSpec, max_steps: int):
    """Linear warm-up, then cosine/linear decay to min_lr_ratio, constant, or wsd (stable at
    the peak, then 1 - sqrt decay over the last decay_fraction of the steps)."""

    def factor(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / (spec.warmup_steps + 1)
        if spec.schedule == "constant":
            return 1.0
        if spec.schedule == "wsd":
            decay_start = max(spec.warmup_steps, max_steps - round(spec.decay_fraction * max_steps))
            if step < decay_start:
                return 1.0
            progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
            return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * (1 - math.sqrt(progress))
        progress = min(1.0, (step - spec.warmup_steps) / max(1, max_steps - spec.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if spec.schedule == "cosine" else 1 - progress
        return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def setup_recomputation(recipe: TrainRecipe, loss_model, batch: dict, accelerator, engine,
                        trainable: int) -> str | None:
    """`gradient_checkpointing: auto`: measure the activations, recompute only the layers the
    device cannot hold (pipeline/training/activation_memory.py). Every process takes the largest
    number any of them needs. Returns the line to log, or None when the recipe decided."""
    from pipeline.training import activation_memory as am

    t = recipe.training
    if t.gradient_checkpointing != "auto":
        return None
    causal_lm = loss_model.causal_lm()
    if engine is not None and engine.zero_optimization_stage() == 3:
        # Partitioned weights are whole only inside the engine's forward, and a probe through the
        # engine without a backward would upset its prefetch bookkeeping.
        am.set_recomputed_layers(causal_lm, len(am.decoder_layers(causal_lm)))
        return "activation checkpointing auto: under ZeRO-3 every layer is recomputed"
    estimate = am.estimate_activations(loss_model, {k: v.to(accelerator.device) for k, v in batch.items()},
                                       t.micro_batch_size, t.sequence_length)
    if t.activation_memory_gib is not None:
        budget, why = t.activation_memory_gib * am.GIB, "allowed (training.activation_memory_gib)"
    else:
        budget, why = am.memory_budget(accelerator.device, trainable), f"free on {accelerator.device}"
    recomputed = torch.tensor(am.layers_to_recompute(estimate, budget), device=accelerator.device)
    if accelerator.num_processes > 1:
        torch.distributed.all_reduce(recomputed, op=torch.distributed.ReduceOp.MAX)
    am.set_recomputed_layers(causal_lm, int(recomputed))
    return am.describe(estimate, budget, int(recomputed), why)


def compile_layers(causal_lm) -> int:
    """Regional compilation: torch.compile each decoder layer; they share one compiled graph."""
    layers = decoder_layers(causal_lm)
    for layer in layers:
        layer.compile()
    return len(layers)
