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
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from countrytune.atomic import atomic_dir
from countrytune.errors import UserError
from countrytune.artifacts.recipe import TrainRecipe, load_recipe, recipe_sha256, recipe_to_yaml

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


def evaluate(model, eval_sets, accelerator) -> dict[str, dict[str, float]]:
    """Loss and perplexity per language on held-out text, summed over every process."""
    import torch

    model.eval()
    langs = sorted(eval_sets)
    sums = torch.zeros(len(langs), 2, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad():
        for i, lang in enumerate(langs):
            for batch in eval_sets[lang]:
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                sums[i, 0] += model(**batch).double()
                sums[i, 1] += (batch["labels"] != -100).sum()
    sums = accelerator.reduce(sums, reduction="sum")
    model.train()
    out = {}
    for i, lang in enumerate(langs):
        loss_sum, tokens = sums[i].tolist()
        if tokens:
            out[lang] = {"loss": loss_sum / tokens, "perplexity": math.exp(min(loss_sum / tokens, 50)),
                         "tokens": int(tokens)}
    return out


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


def _train(recipe: TrainRecipe, run_dir: Path, *, resume: bool, progress: bool,
           stop_after: int | None) -> TrainOutcome:
    import torch
    from accelerate.utils import broadcast_object_list

    # ---- setup -------------------------------------------------------------------------
    from transformers.utils import logging as hf_logging

    from pipeline.training import builders, checkpoint, run_folder
    from pipeline.training import data as data_module
    from pipeline.training.data import prepare_data
    from pipeline.training.heldout_eval import TrainingEval
    from pipeline.training.loss import TokenLossModel
    from pipeline.training.model import config_sha256
    from pipeline.training.packing import (
        RowSchedule,
        eval_rows_for_rank,
        layout_rows,
        mixed_order,
        mixture_shares,
        pack_rows,
    )
    from pipeline.training.lineage import base_provenance, data_lineage, now, weight_hashes
    from countrytune.artifacts.run_record import (
        BaseModelRecord,
        DataSourceRecord,
        DocCounts,
        RunRecord,
        TokenizerRecord,
        TrainingMetrics,
    )
    from countrytune.profiles import load_profile
    from countrytune.software import TRAINING, software_versions
    from pipeline.training.tracking import Trackers, egress

    hf_logging.disable_progress_bar()  # per-shard "Loading weights" bars from every process
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft calls it
    started, started_monotonic, t = now(), time.monotonic(), recipe.training
    accelerator = builders.make_accelerator(recipe)
    rank, world = accelerator.process_index, accelerator.num_processes
    is_main = accelerator.is_main_process
    say = (lambda msg: print(f"[countrytune train] {msg}", file=sys.stderr, flush=True)) if is_main else (lambda msg: None)
    if is_main:  # under the run folder's lock (train() holds it)
        for note in run_folder.claim(run_dir, recipe.model_dump(mode="json"), resume=resume,
                                     latest_checkpoint=checkpoint.latest_complete(run_dir)):
            say(note)
        (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
    accelerator.wait_for_everyone()
    torch.manual_seed(recipe.seed)

    heldout_eval = TrainingEval(recipe, run_dir, say)  # checks the suite before any data work
    tokenizer = builders.setup_tokenizer(recipe, run_dir, accelerator)
    builders.check_base_model(recipe, tokenizer)  # seconds, before hours of tokenising
    # The sources are hashed once per job (they name the cache), the cache built once per node.
    files = [data_module.hash_sources(recipe) if is_main else None]
    if world > 1:
        broadcast_object_list(files, from_process=0)
    with accelerator.local_main_process_first():
        data = prepare_data(recipe, tokenizer, build=accelerator.is_local_main_process, files=files[0])
    counts, shares = mixture_shares(data.train, [s.weight for s in recipe.data.sources],
                                    recipe.data.language_weights, recipe.data.temperature)
    order = mixed_order(data.train, shares, recipe.seed)
    languages = sorted({key[1] if isinstance(key, tuple) else key for key in shares})
    # Described, not built: each process materialises only the rows of its own micro-batches.
    rows = layout_rows(data.train, order, t.sequence_length, tokenizer.pad_token_id,
                       packing=t.packing, split_documents=recipe.task == "cpt")
    schedule = RowSchedule(rows, micro_batch=t.micro_batch_size,
                           accumulation=t.gradient_accumulation_steps, world_size=world, seed=recipe.seed)
    eval_sets = {}
    for lang in data.eval.lang_names:
        lang_rows = pack_rows(data.eval, data.eval.docs_of(lang), t.sequence_length,
                              tokenizer.pad_token_id, packing=True, split_documents=recipe.task == "cpt")
        eval_sets[lang] = eval_rows_for_rank(lang_rows, t.micro_batch_size, rank, world,
                                             tokenizer.pad_token_id)
    say(f"{data.docs_read:,} documents read ({sum(data.docs_rejected.values())} rejected: "
        f"{data.docs_rejected or 'none'}), {len(rows):,} rows of {t.sequence_length} tokens; "
        f"shares {', '.join(f'{mix_key(recipe, k)} {v:.1%}' for k, v in shares.items())}")

    weights, base_path = builders.setup_model(recipe, run_dir, tokenizer, accelerator)
    base_weights = weight_hashes(base_path) if is_main else {}  # the files just loaded, for verify
    trained = weights.module  # the peft model, or the whole causal LM for method: full
    kernel_plan = None  # None: the model's own output head and a plain cross-entropy
    if recipe.kernels.any_enabled():
        from pipeline.training.kernels import apply_kernels, plan_kernels

        # Decided for the device the model will train on: it is still on the CPU here, and
        # accelerate.prepare moves it after.
        kernel_plan = plan_kernels(recipe.kernels, accelerator.device.type)
        for line in apply_kernels(trained, recipe.kernels, device=accelerator.device):
            fell_back = any(w in line for w in ("reference", "kept PyTorch", "nothing fused"))
            say(f"kernels: {'FALLBACK ' if fell_back else ''}{line}")
    model = TokenLossModel(trained, kernel_plan.ce_implementation if kernel_plan else None)
    if t.compile:
        say(f"torch.compile: {builders.compile_layers(model.causal_lm())} decoder layers (regional)")
    optimizer = builders.make_optimizer(trained, recipe.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Made on the prepared optimiser, which reaches the one that steps: with offload_optimizer
    # that is DeepSpeedCPUAdam, not the AdamW above, and a scheduler on the AdamW stopped
    # reaching it once a checkpoint load replaced its parameter groups (a resumed run then
    # kept the checkpoint's learning rate). A raw scheduler, stepped here once per optimiser
    # step: accelerate's wrapper would step it once per process.
    scheduler = builders.make_scheduler(optimizer, recipe.optim, t.max_steps)
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
    say(f"{world} process(es) on {accelerator.device.type}, {mode}, "
        f"{next(trained.parameters()).dtype}, attention {model_config(trained)._attn_implementation}; "
        f"method {recipe.method}, {trainable:,} trainable parameters")
    if (line := builders.setup_recomputation(recipe, accelerator.unwrap_model(model),
                                             schedule.micro_batch_at(0, 0, rank), accelerator, engine,
                                             trainable)) is not None:
        say(line)

    stop_requests = run_folder.StopRequests(run_dir, is_main)  # SIGTERM, SIGUSR1, RUN_DIR/STOP
    step, tokens_seen, wandb_id = 0, 0, None
    latest = checkpoint.latest_complete(run_dir) if resume else None
    if latest is not None:
        state = checkpoint.load_checkpoint(latest, accelerator=accelerator, weights=weights,
                                           optimizer=optimizer, scheduler=scheduler, engine=engine)
        step, tokens_seen, wandb_id = state["step"], state["tokens_seen"], state.get("wandb_id")
        say(f"resuming from checkpoint {latest} (step {step})")
        if is_main:  # lines an interrupted attempt logged after this checkpoint are redone
            run_folder.truncate_logs(run_dir, step)
    start_step = step  # --stop-after counts the steps of this attempt
    heldout_eval.before(weights, tokenizer, accelerator, zero3, untouched=step == 0)  # the base
    if is_main and latest is None:  # a fresh start: no logs from an earlier attempt
        for name in ("metrics.jsonl", "eval.jsonl", "DONE"):
            (run_dir / name).unlink(missing_ok=True)
    trackers = Trackers(recipe.tracking, run_dir, f"{recipe.country}-{recipe.name}",
                        recipe.model_dump(mode="json"), wandb_id) if is_main else None

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f} · {task.fields[tps]:,.0f} tok/s"),
                   TimeRemainingColumn(), disable=not (is_main and progress))
    task = bar.add_task("train", total=t.max_steps, completed=step, loss=float("nan"), tps=0.0)
    window_loss = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    window_start, window_tokens = time.monotonic(), tokens_seen

    def record_eval(results: dict) -> None:
        if is_main:
            trackers.log({f"eval/{lang}/loss": r["loss"] for lang, r in results.items()}, step)
            with (run_dir / "eval.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "languages": results}) + "\n")

    # ---- the loop ----------------------------------------------------------------------
    model.train()
    with bar:
        while step < t.max_steps:
            micro_batches = [schedule.micro_batch_at(step, m, rank)
                             for m in range(t.gradient_accumulation_steps)]
            # Divide by the target tokens of the whole step (all micro-batches, all processes),
            # not per micro-batch: then 1x8 and 8x1 give the same gradient. accelerate (or
            # DeepSpeed) divides by the accumulation steps and DDP averages over processes,
            # so those factors are multiplied back in.
            local_targets = sum(int((b["labels"] != -100).sum()) for b in micro_batches)
            step_targets = accelerator.reduce(
                torch.tensor(local_targets, device=accelerator.device), reduction="sum").item()
            scale = world * t.gradient_accumulation_steps / max(step_targets, 1)
            for batch in micro_batches:
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                with accelerator.accumulate(model):
                    loss_sum = model(**batch)
                    accelerator.backward(loss_sum * scale)
                    if engine is None and accelerator.sync_gradients and recipe.optim.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(trained.parameters(), recipe.optim.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                window_loss[0] += loss_sum.detach().double()
                window_loss[1] += (batch["labels"] != -100).sum()
                tokens_seen += batch["input_ids"].numel() * world
            scheduler.step()
            step += 1

            if step % t.log_every == 0 or step == t.max_steps:
                summed = accelerator.reduce(window_loss.clone(), reduction="sum")
                loss = (summed[0] / summed[1].clamp(min=1)).item()
                elapsed = time.monotonic() - window_start
                tps = (tokens_seen - window_tokens) / max(elapsed, 1e-9)  # the last window may be short
                if is_main:
                    trackers.log({"train/loss": loss, "train/lr": scheduler.get_last_lr()[0],
                                  "train/tokens_per_s": tps, "train/tokens": tokens_seen,
                                  "train/epoch": schedule.epochs_at(step), **device_memory(accelerator)},
                                 step)
                bar.update(task, completed=step, loss=loss, tps=tps)
                window_loss.zero_()
                window_start, window_tokens = time.monotonic(), tokens_seen
            else:
                bar.update(task, completed=step)
            if t.eval_every and step % t.eval_every == 0 and step < t.max_steps:
                record_eval(evaluate(model, eval_sets, accelerator))
            # Stop early with a complete checkpoint: after --stop-after steps of this attempt, or
            # when the scheduler asks (preemption, time limit), so the requeued job resumes here.
            preempted = stop_requests.agreed(accelerator) if step < t.max_steps else None
            stopping = step < t.max_steps and (preempted is not None or (
                stop_after is not None and step - start_step >= stop_after))
            if (t.save_every and step % t.save_every == 0 and step < t.max_steps) or stopping:
                state = {"step": step, "tokens_seen": tokens_seen,
                         "wandb_id": trackers.wandb_id if trackers else None}
                ckpt = checkpoint.checkpoint_dir(run_dir, step)
                checkpoint.save_checkpoint(ckpt, accelerator=accelerator, weights=weights,
                                           optimizer=optimizer, scheduler=scheduler, engine=engine,
                                           trainer_state=state, recipe_yaml=recipe_to_yaml(recipe))
                if is_main:
                    checkpoint.prune(run_dir, t.keep_checkpoints)
                say(f"checkpoint {ckpt}")
            if stopping:
                if preempted is not None:
                    say(f"stopping after step {step} on {preempted}: checkpoint written; the job "
                        f"requeues and resumes here")
                    if is_main:
                        stop_requests.close(run_dir, step, preempted)
                else:
                    say(f"stopping after step {step} as asked; rerun the command to continue")
                if is_main:
                    trackers.close()
                _finish(accelerator)
                return TrainOutcome(run_dir / weights.output_name, trained, preempted)

    # ---- save --------------------------------------------------------------------------
    final_eval = evaluate(model, eval_sets, accelerator)
    record_eval(final_eval)
    weights.save(run_dir / weights.output_name, is_main, tokenizer)
    heldout_results = heldout_eval.after(weights, tokenizer, accelerator, zero3)
    if is_main:
        with atomic_dir(run_dir / "tokenizer") as tmp:
            tokenizer.save_pretrained(tmp)
        trackers.close()
        last = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        train_loss = next((m["train/loss"] for m in reversed(last) if "train/loss" in m), None)
        RunRecord(
            # The profile's code, also when the recipe names a profile file by path.
            country=load_profile(recipe.country).country, name=recipe.name, languages=languages,
            task=recipe.task,
            method=recipe.method,
            # A local directory is recorded absolute: the vLLM and peft lines in the model card
            # must work from wherever the package is used on this machine.
            base_model=BaseModelRecord(
                name_or_path=str(Path(base_path).resolve()) if Path(base_path).is_dir()
                else recipe.model.name_or_path,
                revision=recipe.model.revision, config_sha256=config_sha256(weights.causal_lm),
                built_tiny=recipe.model.tiny is not None, random_weights=recipe.model.random_weights,
                weights_sha256=base_weights,
                **base_provenance(base_path)),
            tokenizer=TokenizerRecord(differs_from_base=recipe.tokenizer.name_or_path is not None
                                      or recipe.tokenizer.chat_template is not None),
            recipe_sha256=recipe_sha256(recipe),
            data=[DataSourceRecord(**entry) for entry in data_lineage(recipe, data.files)],
            data_docs=DocCounts(read=data.docs_read, train=len(data.train), eval=len(data.eval),
                                rejected=data.docs_rejected),
            data_mixture=mixture(recipe, counts, shares, schedule.epochs_at(step)),
            metrics=TrainingMetrics(steps=step, tokens=tokens_seen, train_loss=train_loss, world_size=world,
                                    wall_s=round(time.monotonic() - started_monotonic, 1)),
            eval=final_eval, kernels=kernel_plan.summary() if kernel_plan else {},
            heldout_eval=heldout_results, egress=egress(recipe.tracking), software=software_versions(TRAINING),
            started=started, finished=now(),
        ).write(run_dir)
        (run_dir / "DONE").write_text("")
        say(f"{weights.output_name}: {run_dir / weights.output_name}")
        for lang, r in sorted(final_eval.items()):
            say(f"  eval {lang}: loss {r['loss']:.4f}, perplexity {r['perplexity']:.2f} ({r['tokens']:,} tokens)")
    _finish(accelerator)
    return TrainOutcome(run_dir / weights.output_name, trained)


def model_config(trained):
    get_base = getattr(trained, "get_base_model", None)
    return (get_base() if get_base is not None else trained).config


def device_memory(accelerator) -> dict[str, float]:
    """Peak accelerator memory of this process so far, for the metrics (CUDA only)."""
    import torch

    if accelerator.device.type != "cuda":
        return {}
    return {"train/peak_mem_gib": torch.cuda.max_memory_allocated(accelerator.device) / 2**30}


def mix_key(recipe: TrainRecipe, key) -> str:
    """`jav`, or `jav from SOURCE` when sources are weighted."""
    return f"{key[1]} from {recipe.data.sources[key[0]].path}" if isinstance(key, tuple) else key


def mixture(recipe: TrainRecipe, counts: dict, shares: dict, passes_over_order: float) -> dict:
    """Per language (or language of a weighted source): documents, share drawn, and passes
    over its documents in the run (the order holds round(share x total) of each one's
    documents per pass; see mixed_order)."""
    from countrytune.artifacts.run_record import LanguageMix

    total = sum(counts[key] for key in shares)
    return {mix_key(recipe, key): LanguageMix(
                docs=counts[key], share=round(share, 6),
                passes=round(max(1, round(share * total)) / counts[key] * passes_over_order, 4))
            for key, share in shares.items()}


def _finish(accelerator) -> None:
    """End a run on every process together, and take the process group down before the
    interpreter does: left to exit, gloo's threads were sometimes still joinable when it
    tore down, and the process died in std::terminate (exit -6) after a completed save."""
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
    args = parser.parse_args(argv)
    args.command = "train"
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
