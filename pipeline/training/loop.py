"""Training: a recipe and clean shards in, a LoRA adapter (or, with `method: full`, a whole
model) out. One loop, read top to bottom.

    countrytune train recipes/id/tiny-cpu.yaml --output runs/demo
    accelerate launch -m pipeline.train recipes/id/cpt-lora.yaml --output runs/id-cpt
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m pipeline.train ...

Rerunning the same command resumes from the newest complete checkpoint in the output dir.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from countrytune.atomic import atomic_dir
from countrytune.errors import UserError
from countrytune.artifacts.recipe import TrainRecipe, load_recipe, recipe_sha256, recipe_to_yaml
from pipeline.training.lineage import initial_adapter, mix_key, now, run_record
from pipeline.training.measures import LossWindow, device_memory, evaluate, preference_metrics, record_eval

EXAMPLE = """examples:
  countrytune train recipes/id/tiny-cpu.yaml --output runs/demo
  countrytune train recipes/id/cpt-lora.yaml --set training.max_steps=2000 --set lora.r=32
  accelerate launch --config_file launch/accelerate/zero3.yaml -m pipeline.train recipes/id/cpt-lora.yaml
"""


@dataclass
class TrainOutcome:
    output_dir: Path  # RUN/adapter, or RUN/model for method: full
    model: Any  # the trained model in memory (tests compare exported packages with it)
    preempted: str | None = None  # why it stopped early to be requeued (signal or STOP file)


def train(recipe: TrainRecipe, run_dir: Path, *, resume: bool = True, progress: bool = True,
          stop_after: int | None = None) -> TrainOutcome:
    """Run the recipe into run_dir; returns where the adapter (or model) is, and the trained model.

    stop_after: checkpoint and stop after this many optimiser steps (a run split over
    scheduler time slots; rerunning resumes). One trainer per run folder: a second is refused.
    """
    from countrytune.locations import check_location
    from pipeline.training import run_folder
    from pipeline.training.tracking import wandb_destination

    # Checkpoints, trackers' files and the trained weights all live in the run folder.
    check_location(run_dir, recipe.country, "training output")
    if (server := wandb_destination(recipe.tracking)) is not None:
        check_location(server, recipe.country, "wandb server",
                       ", set tracking.wandb.mode: offline (metrics stay in the run folder)")
    run_folder.die_with_launcher()
    with run_folder.hold(run_dir), run_folder.signals_restored():
        return _train(recipe, run_dir, resume=resume, progress=progress, stop_after=stop_after)


class Run:
    """Who this process is in the job, and the one way it reports to the user."""

    def __init__(self, recipe: TrainRecipe, accelerator) -> None:
        self.recipe, self.accelerator = recipe, accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.is_main = accelerator.is_main_process
        self.started, self.started_monotonic = now(), time.monotonic()
        self.recipe_sha256 = recipe_sha256(recipe)  # of the recipe as written, registry:// and all
        self.base_package = None  # a registry base's BasePackageRef, once fetched

    def say(self, msg: str) -> None:
        if self.is_main:
            print(f"[countrytune train] {msg}", file=sys.stderr, flush=True)


@dataclass
class DataPlan:
    """The tokenised data and the order the loop draws it in."""

    data: Any  # pipeline.training.data.PreparedData
    counts: dict
    shares: dict
    languages: list[str]
    schedule: Any  # pipeline.training.packing.RowSchedule
    eval_sets: dict[str, list]


@dataclass
class ModelParts:
    """The model as the loop steps it, and what saves and checkpoints it."""

    weights: Any  # AdapterWeights or FullWeights (trained_weights.py)
    trained: Any  # the peft model, or the whole causal LM for method: full
    model: Any  # TokenLossModel, prepared by accelerate (a DeepSpeed engine under ZeRO)
    optimizer: Any
    scheduler: Any
    engine: Any  # the DeepSpeed engine, or None
    zero3: bool
    kernel_plan: Any  # None: the model's own output head and a plain cross-entropy
    base_path: str
    base_weights: dict[str, str]
    initial_adapter: Any  # AdapterRef of lora.init_from, hashed when loaded; None: a fresh LoRA
    units: Any  # what the loss is divided by in a batch: target tokens, or pairs (task dpo)


@dataclass
class Progress:
    step: int = 0
    tokens_seen: int = 0
    wandb_id: str | None = None


def _train(recipe: TrainRecipe, run_dir: Path, *, resume: bool, progress: bool,
           stop_after: int | None) -> TrainOutcome:
    from pipeline.training import builders, run_folder
    from pipeline.training.heldout_eval import TrainingEval
    from pipeline.training.tracking import Trackers

    run = _setup_run(recipe, run_dir, resume)
    recipe = _fetch_registry_base(recipe, run)  # the recipe as written is in recipe.yaml
    heldout_eval = TrainingEval(recipe, run_dir, run.say)  # checks the suite before any data work
    tokenizer = builders.setup_tokenizer(recipe, run_dir, run.accelerator)
    builders.check_base_model(recipe, tokenizer)  # seconds, before hours of tokenising
    plan = _setup_data(recipe, run, tokenizer)
    parts = _setup_model(recipe, run_dir, run, tokenizer, plan)
    stop_requests = run_folder.StopRequests(run_dir, run.is_main)  # SIGTERM, SIGUSR1, RUN_DIR/STOP
    state = _resume(run_dir, run, parts, resume)
    heldout_eval.before(parts.weights, tokenizer, run.accelerator, parts.zero3,
                        untouched=state.step == 0)  # the base
    trackers = Trackers(recipe.tracking, run_dir, f"{recipe.country}-{recipe.name}",
                        recipe.model_dump(mode="json"), state.wandb_id) if run.is_main else None
    outcome = _train_loop(recipe, run_dir, run, plan, parts, state, trackers, stop_requests,
                          progress=progress, stop_after=stop_after)
    if outcome is not None:  # stopped early, checkpoint written
        return outcome
    return _save(recipe, run_dir, run, tokenizer, plan, parts, state, trackers, heldout_eval)


def _setup_run(recipe: TrainRecipe, run_dir: Path, resume: bool) -> Run:
    """The accelerator, the run folder claimed (or resumed), the recipe written beside it."""
    import torch
    from transformers.utils import logging as hf_logging

    from countrytune import library_output
    from pipeline.training import builders, checkpoint, run_folder

    hf_logging.disable_progress_bar()  # per-shard "Loading weights" bars from every process
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft calls it
    run = Run(recipe, builders.make_accelerator(recipe))
    if run.is_main:  # under the run folder's lock (train() holds it)
        for note in run_folder.claim(run_dir, recipe.model_dump(mode="json"), resume=resume,
                                     latest_checkpoint=checkpoint.latest_complete(run_dir)):
            run.say(note)
        (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
    run.accelerator.wait_for_everyone()
    # After the claim, which may clear an earlier attempt's outputs (library.log among them).
    library_output.log_to(run_dir if run.is_main else run_dir / "logs" / f"rank-{run.rank}")
    torch.manual_seed(recipe.seed)
    return run


def _fetch_registry_base(recipe: TrainRecipe, run: Run) -> TrainRecipe:
    """A `registry://` base pulled (first process per node) and verified into this machine's
    cache; the rest of the run loads that folder. Other recipes pass through."""
    from pipeline.registry.bases import fetch_base, is_registry_ref

    spec = recipe.model
    if not is_registry_ref(spec.name_or_path):
        return recipe
    with run.accelerator.local_main_process_first():
        folder, run.base_package = fetch_base(spec.name_or_path, spec.registry, log=run.say)
    run.say(f"base {run.base_package.ref} from {run.base_package.registry}: {folder} (verified)")
    return recipe.model_copy(update={"model": spec.model_copy(update={
        "name_or_path": str(folder), "registry": None})})


def _setup_data(recipe: TrainRecipe, run: Run, tokenizer) -> DataPlan:
    """Tokenise once (a cache per node), mix the languages, lay out the rows."""
    from accelerate.utils import broadcast_object_list

    from pipeline.training import data as data_module
    from pipeline.training.packing import (
        RowSchedule,
        eval_rows_for_rank,
        layout_pairs,
        layout_rows,
        mixed_order,
        mixture_shares,
    )

    t, accelerator = recipe.training, run.accelerator
    # The sources are hashed once per job (they name the cache), the cache built once per node.
    files = [data_module.hash_sources(recipe) if run.is_main else None]
    if run.world > 1:
        broadcast_object_list(files, from_process=0)
    with accelerator.local_main_process_first():
        data = data_module.prepare_data(recipe, tokenizer, build=accelerator.is_local_main_process,
                                        files=files[0])
    counts, shares = mixture_shares(data.train, [s.weight for s in recipe.data.sources],
                                    recipe.data.language_weights, recipe.data.temperature)
    order = mixed_order(data.train, shares, recipe.seed)
    languages = sorted({key[1] if isinstance(key, tuple) else key for key in shares})
    def layout(docs, order, *, packing: bool):
        """Described, not built: each process materialises only the rows of its own micro-batches."""
        if recipe.task == "dpo":  # whole pairs
            return layout_pairs(docs, order, t.sequence_length, tokenizer.pad_token_id, packing=packing)
        return layout_rows(docs, order, t.sequence_length, tokenizer.pad_token_id, packing=packing,
                           split_documents=recipe.task == "cpt")

    rows = layout(data.train, order, packing=t.packing)
    schedule = RowSchedule(rows, micro_batch=t.micro_batch_size,
                           accumulation=t.gradient_accumulation_steps, world_size=run.world, seed=recipe.seed)
    eval_sets = {}
    for lang in data.eval.lang_names:
        lang_rows = layout(data.eval, data.eval.docs_of(lang), packing=True).materialise()
        eval_sets[lang] = eval_rows_for_rank(lang_rows, t.micro_batch_size, run.rank, run.world,
                                             tokenizer.pad_token_id)
    what = "preference pairs" if recipe.task == "dpo" else "documents"
    run.say(f"{data.docs_read:,} {what} read ({sum(data.docs_rejected.values())} rejected: "
            f"{data.docs_rejected or 'none'}), {len(rows):,} rows of {t.sequence_length} tokens; "
            f"shares {', '.join(f'{mix_key(recipe, k)} {v:.1%}' for k, v in shares.items())}")
    return DataPlan(data, counts, shares, languages, schedule, eval_sets)


def _setup_model(recipe: TrainRecipe, run_dir: Path, run: Run, tokenizer, plan: DataPlan) -> ModelParts:
    """Base and adapter, kernels, optimiser and schedule, prepared for the devices; then the
    layers to recompute, measured on the first micro-batch."""
    from pipeline.training import builders
    from countrytune.hashing import weight_hashes
    from pipeline.training.loss import TokenLossModel, target_tokens
    from pipeline.training.preference_loss import PreferenceLossModel, pairs_in

    accelerator = run.accelerator
    weights, base_path = builders.setup_model(recipe, run_dir, tokenizer, accelerator)
    base_weights = weight_hashes(base_path) if run.is_main else {}  # the files just loaded, for verify
    # Hashed now, not when run.json is written hours later: the file may be replaced meanwhile.
    started_from = initial_adapter(recipe) if run.is_main else None
    trained = weights.module
    kernel_plan = _setup_kernels(recipe, run, trained)
    if recipe.task == "dpo":
        model, units = PreferenceLossModel(trained, recipe.preference.beta, recipe.preference.label_smoothing,
                                           recipe.preference.chosen_nll), pairs_in
    else:
        model, units = TokenLossModel(trained, kernel_plan.ce_implementation if kernel_plan else None), target_tokens
    if recipe.training.compile:
        run.say(f"torch.compile: {builders.compile_layers(model.causal_lm())} decoder layers (regional)")
    optimizer = builders.make_optimizer(trained, recipe.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Made on the prepared optimiser, which reaches the one that steps: with offload_optimizer
    # that is DeepSpeedCPUAdam, not the AdamW above, and a scheduler on the AdamW stopped
    # reaching it once a checkpoint load replaced its parameter groups (a resumed run then
    # kept the checkpoint's learning rate). A raw scheduler, stepped here once per optimiser
    # step: accelerate's wrapper would step it once per process.
    scheduler = builders.make_scheduler(optimizer, recipe.optim, recipe.training.max_steps)
    engine = model if accelerator.distributed_type.name == "DEEPSPEED" else None
    zero3 = engine is not None and engine.zero_optimization_stage() == 3
    if zero3 and recipe.method == "full" and kernel_plan and kernel_plan.ce_implementation:
        # The fused loss reads the head's weight gathered outside DeepSpeed's hooks, which
        # then never see its gradient: right for a frozen head, wrong for a trained one.
        raise UserError("method: full under ZeRO-3 trains the output head, which the fused "
                        "cross-entropy reads outside DeepSpeed's hooks; set "
                        "kernels.fused_linear_cross_entropy: false (or use ZeRO-2)")
    mode = (f"DeepSpeed ZeRO-{engine.zero_optimization_stage()}" if engine is not None
            else accelerator.distributed_type.name)
    trainable = sum(getattr(p, "ds_numel", p.numel())  # ZeRO-3 leaves p.numel() == 0
                    for p in trained.parameters() if p.requires_grad)
    run.say(f"{run.world} process(es) on {accelerator.device.type}, {mode}, "
            f"{next(trained.parameters()).dtype}, attention {model_config(trained)._attn_implementation}; "
            f"method {recipe.method}, {trainable:,} trainable parameters")
    if (line := builders.setup_recomputation(recipe, accelerator.unwrap_model(model),
                                             plan.schedule.micro_batch_at(0, 0, run.rank), accelerator,
                                             engine, trainable)) is not None:
        run.say(line)
    if recipe.task == "dpo":  # the probe's pairs are not the first window's
        accelerator.unwrap_model(model).take_window(training=True)
    return ModelParts(weights, trained, model, optimizer, scheduler, engine, zero3, kernel_plan,
                      base_path, base_weights, started_from, units)


def _setup_kernels(recipe: TrainRecipe, run: Run, trained):
    """The fused kernels the recipe asks for, patched into the model; None when none are on."""
    if not recipe.kernels.any_enabled():
        return None
    from pipeline.training.kernels import apply_kernels, plan_kernels

    # Decided for the device the model will train on: it is still on the CPU here, and
    # accelerate.prepare moves it after.
    kernel_plan = plan_kernels(recipe.kernels, run.accelerator.device.type)
    for line in apply_kernels(trained, recipe.kernels, device=run.accelerator.device):
        fell_back = any(w in line for w in ("reference", "kept PyTorch", "nothing fused"))
        run.say(f"kernels: {'FALLBACK ' if fell_back else ''}{line}")
    return kernel_plan


def _resume(run_dir: Path, run: Run, parts: ModelParts, resume: bool) -> Progress:
    """Where the loop starts: step 0, or the newest complete checkpoint's state."""
    from pipeline.training import checkpoint, run_folder

    state = Progress()
    latest = checkpoint.latest_complete(run_dir) if resume else None
    if latest is not None:
        saved = checkpoint.load_checkpoint(latest, accelerator=run.accelerator, weights=parts.weights,
                                           optimizer=parts.optimizer, scheduler=parts.scheduler,
                                           engine=parts.engine)
        state = Progress(saved["step"], saved["tokens_seen"], saved.get("wandb_id"))
        run.say(f"resuming from checkpoint {latest} (step {state.step})")
        if run.is_main:  # lines an interrupted attempt logged after this checkpoint are redone
            run_folder.truncate_logs(run_dir, state.step)
    elif run.is_main:  # a fresh start: no logs from an earlier attempt
        for name in ("metrics.jsonl", "eval.jsonl", "DONE"):
            (run_dir / name).unlink(missing_ok=True)
    return state


def _train_loop(recipe: TrainRecipe, run_dir: Path, run: Run, plan: DataPlan, parts: ModelParts,
                state: Progress, trackers, stop_requests, *, progress: bool,
                stop_after: int | None) -> TrainOutcome | None:
    """Optimiser steps until max_steps; returns an outcome only when it stops early."""
    import torch

    t, accelerator, world = recipe.training, run.accelerator, run.world
    model, optimizer, engine = parts.model, parts.optimizer, parts.engine
    start_step = state.step  # --stop-after counts the steps of this attempt
    bar, task = _progress_bar(t.max_steps, state.step, enabled=run.is_main and progress)
    window = LossWindow(accelerator, state.tokens_seen)
    model.train()
    with bar:
        while state.step < t.max_steps:
            micro_batches = [plan.schedule.micro_batch_at(state.step, m, run.rank)
                             for m in range(t.gradient_accumulation_steps)]
            # Divide by the target tokens of the whole step (all micro-batches, all processes),
            # not per micro-batch: then 1x8 and 8x1 give the same gradient. accelerate (or
            # DeepSpeed) divides by the accumulation steps and DDP averages over processes,
            # so those factors are multiplied back in.
            local_targets = sum(parts.units(b) for b in micro_batches)  # tokens, or pairs
            step_targets = accelerator.reduce(
                torch.tensor(local_targets, device=accelerator.device), reduction="sum").item()
            scale = world * t.gradient_accumulation_steps / max(step_targets, 1)
            for batch in micro_batches:
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                with accelerator.accumulate(model):
                    loss_sum = model(**batch)
                    accelerator.backward(loss_sum * scale)
                    if engine is None and accelerator.sync_gradients and recipe.optim.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(parts.trained.parameters(), recipe.optim.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                window.add(loss_sum, parts.units(batch))
                state.tokens_seen += batch["input_ids"].numel() * world
            parts.scheduler.step()
            state.step += 1

            if state.step % t.log_every == 0 or state.step == t.max_steps:
                loss, tps = window.close(state.tokens_seen)
                preference = preference_metrics(recipe, model, accelerator)
                if run.is_main:
                    trackers.log({"train/loss": loss, "train/lr": parts.scheduler.get_last_lr()[0],
                                  "train/tokens_per_s": tps, "train/tokens": state.tokens_seen,
                                  "train/epoch": plan.schedule.epochs_at(state.step),
                                  **preference, **device_memory(accelerator)}, state.step)
                bar.update(task, completed=state.step, loss=loss, tps=tps)
            else:
                bar.update(task, completed=state.step)
            if t.eval_every and state.step % t.eval_every == 0 and state.step < t.max_steps:
                record_eval(run, run_dir, trackers, state.step,
                            evaluate(model, plan.eval_sets, accelerator, parts.units))
            # Stop early with a complete checkpoint: after --stop-after steps of this attempt, or
            # when the scheduler asks (preemption, time limit), so the requeued job resumes here.
            preempted = stop_requests.agreed(accelerator) if state.step < t.max_steps else None
            stopping = state.step < t.max_steps and (preempted is not None or (
                stop_after is not None and state.step - start_step >= stop_after))
            if (t.save_every and state.step % t.save_every == 0 and state.step < t.max_steps) or stopping:
                _checkpoint(recipe, run_dir, run, parts, state, trackers)
            if stopping:
                return _stop_early(run, run_dir, parts, state, trackers, stop_requests, preempted)
    return None


def _progress_bar(total: int, completed: int, *, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f} · {task.fields[tps]:,.0f} tok/s"),
                   TimeRemainingColumn(), disable=not enabled)
    return bar, bar.add_task("train", total=total, completed=completed, loss=float("nan"), tps=0.0)


def _checkpoint(recipe: TrainRecipe, run_dir: Path, run: Run, parts: ModelParts, state: Progress,
                trackers) -> None:
    from pipeline.training import checkpoint

    trainer_state = {"step": state.step, "tokens_seen": state.tokens_seen,
                     "wandb_id": trackers.wandb_id if trackers else None}
    ckpt = checkpoint.checkpoint_dir(run_dir, state.step)
    checkpoint.save_checkpoint(ckpt, accelerator=run.accelerator, weights=parts.weights,
                               optimizer=parts.optimizer, scheduler=parts.scheduler, engine=parts.engine,
                               trainer_state=trainer_state, recipe_yaml=recipe_to_yaml(recipe))
    if run.is_main:
        checkpoint.prune(run_dir, recipe.training.keep_checkpoints)
    run.say(f"checkpoint {ckpt}")


def _stop_early(run: Run, run_dir: Path, parts: ModelParts, state: Progress, trackers, stop_requests,
                preempted: str | None) -> TrainOutcome:
    if preempted is not None:
        run.say(f"stopping after step {state.step} on {preempted}: checkpoint written; the job "
                f"requeues and resumes here")
        if run.is_main:
            stop_requests.close(run_dir, state.step, preempted)
    else:
        run.say(f"stopping after step {state.step} as asked; rerun the command to continue")
    if run.is_main:
        trackers.close()
    _finish(run.accelerator)
    return TrainOutcome(run_dir / parts.weights.output_name, parts.trained, preempted)


def _save(recipe: TrainRecipe, run_dir: Path, run: Run, tokenizer, plan: DataPlan, parts: ModelParts,
          state: Progress, trackers, heldout_eval) -> TrainOutcome:
    """The last evaluation, the trained weights, the tokenizer, run.json, then DONE."""
    final_eval = evaluate(parts.model, plan.eval_sets, run.accelerator, parts.units)
    record_eval(run, run_dir, trackers, state.step, final_eval)
    weights = parts.weights
    weights.save(run_dir / weights.output_name, run.is_main, tokenizer)
    heldout_results = heldout_eval.after(weights, tokenizer, run.accelerator, parts.zero3)
    if run.is_main:
        with atomic_dir(run_dir / "tokenizer") as tmp:
            tokenizer.save_pretrained(tmp)
        trackers.close()
        run_record(recipe, run_dir, run, plan, parts, state, final_eval, heldout_results).write(run_dir)
        (run_dir / "DONE").write_text("")
        run.say(f"{weights.output_name}: {run_dir / weights.output_name}")
        for lang, r in sorted(final_eval.items()):
            run.say(f"  eval {lang}: loss {r['loss']:.4f}, " + (
                f"perplexity {r['perplexity']:.2f} ({r['tokens']:,} tokens)" if "perplexity" in r else
                f"chosen preferred in {r['reward_accuracy']:.0%} of {r['pairs']:,} pairs"))
    _finish(run.accelerator)
    return TrainOutcome(run_dir / weights.output_name, parts.trained)


def model_config(trained):
    get_base = getattr(trained, "get_base_model", None)
    return (get_base() if get_base is not None else trained).config


def _finish(accelerator) -> None:
    """End a run on every process together and take the process group down. DeepSpeed still
    holds its groups after this; pipeline/train.py says how a finished rank leaves anyway."""
    import torch.distributed as dist

    accelerator.wait_for_everyone()
    accelerator.end_training()
    if dist.is_available() and dist.is_initialized() and accelerator.num_processes > 1:
        dist.destroy_process_group()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", type=Path, help="training recipe YAML (recipes/<country>/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. training.max_steps=50 (repeatable)")
    p.add_argument("--output", type=Path, help="run directory (default runs/<country>-<name>)")
    p.add_argument("--no-resume", action="store_true",
                   help="start from scratch even if the output dir has checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--stop-after", type=int, metavar="STEPS",
                   help="checkpoint and stop after this many steps; rerun to continue")
    p.add_argument("--print-deepspeed", action="store_true",
                   help="print the DeepSpeed config the recipe renders and exit")


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_deepspeed:
        if recipe.deepspeed is None:
            raise UserError(f"{args.recipe}: the recipe sets no deepspeed stage")
        from pipeline.training.deepspeed_config import render

        print(json.dumps(render(recipe.deepspeed, recipe, bf16=recipe.model.dtype != "fp32"), indent=2))
        return 0
    run_dir = args.output or Path("runs") / f"{recipe.country}-{recipe.name}"
    if (run_dir / "DONE").exists() and not args.no_resume:
        print(f"[countrytune train] {run_dir} is already finished (DONE); output: "
              f"{run_dir / ('model' if recipe.method == 'full' else 'adapter')}", file=sys.stderr)
        return 0
    outcome = train(recipe, run_dir, resume=not args.no_resume, progress=not args.no_progress,
                    stop_after=args.stop_after)
    if outcome.preempted:
        from pipeline.training.run_folder import REQUEUE_EXIT, under_launcher

        # Under accelerate launch / torchrun any non-zero worker exit becomes 1 and a traceback;
        # there the PREEMPTED file in the run folder is the signal to requeue.
        return 0 if under_launcher() else REQUEUE_EXIT
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a LoRA adapter (or every weight) from a recipe",
                       description=__doc__.split("\n\n")[0], epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(run=run)


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.train` / `accelerate launch -m pipeline.train`."""
    from countrytune.errors import run_command

    parser = argparse.ArgumentParser(prog="pipeline.train", description=__doc__, epilog=EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' own output; otherwise it goes to RUN/library.log")
    args = parser.parse_args(argv)
    args.command = "train"
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
