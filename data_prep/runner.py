"""Runs a prep job: input files (or byte ranges of big ones) as shards over worker processes,
resumable shard by shard.

Layout of the output folder:
  data/part-NNNNN.parquet      kept documents (id, text, source, lang)
  rejects/part-NNNNN.parquet   every dropped record with its stage and reason
  stats.json, DATA_CARD.md     merged counts
  _work/                       per-shard pass-one output, dedup plans, stats, completion markers

Here the job reads top to bottom: plan the shards, claim the output folder, run pass one,
plan the dedup, run pass two, merge the shards' stats. Each pass is one list of steps per
shard (data_prep.passes): pass one reads, normalises, filters, redacts, keys and writes; the
dedup plan needs every shard's keys and is made between the passes by streaming them through
disk partitions (data_prep.dedup_plan) into _work/plan/; pass two reads pass one's output
back, deduplicates and writes. `data_prep.executors.run_shard` writes a shard's marker after
its files are renamed into place, so a killed run leaves no shard half-counted, and a rerun
skips marked shards and ends with the same files as an uninterrupted run.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import fsspec

from countrytune.artifacts.prep_output import DATA_CARD_NAME, STATS_NAME, write_stats
from countrytune.atomic import remove_named
from countrytune.errors import UserError
from countrytune.folder_lock import LOCK_NAME, FolderLock
from countrytune.profiles import CountryProfile, load_profile
from data_prep.config import PrepConfig
from data_prep.datacard import finalize_stats, write_data_card
from data_prep.dedup_plan import plan_dedup
from data_prep.executors import make_executor
from data_prep.passes import check_inputs_unchanged, pass_one_shard, pass_two_shard
from data_prep.readers import DocumentReader, expand_inputs, unreadable_errors
from data_prep.shard_files import ShardFiles, forget_unreadable, write_json
from data_prep.step import StageStats


def plan_shards(files: list[str], cfg: PrepConfig) -> list[tuple[str, tuple[int, int] | None]]:
    """One shard per input file; files that can be split (uncompressed with one record per
    line, or Parquet) and exceed `shard_bytes` become byte ranges of about that size."""
    reader = DocumentReader(cfg.reader, "und")
    shards: list[tuple[str, tuple[int, int] | None]] = []
    for path in files:
        size = fsspec.open(path).fs.size(path) if reader.splittable(path) else 0
        try:
            spans = reader.spans(path, size, cfg.shard_bytes) if size > cfg.shard_bytes else []
        except unreadable_errors():  # not Parquet after all: its one shard rejects it, counted
            spans = []
        if len(spans) <= 1:  # small, or a Parquet file of one big row group
            shards.append((path, None))
            continue
        shards += [(path, span) for span in spans]
    return shards


def check_output_allowed(output: str, profile: CountryProfile) -> Path:
    from countrytune.locations import check_location

    check_location(output, profile, "prep output")  # the rule every writer follows
    if "://" in output and not output.startswith("file://"):
        raise UserError(f"output {output}: prep writes to local paths only; write locally, then "
                        f"copy to the object store")
    return Path(output.removeprefix("file://"))


# What a prep run writes into its output folder; --overwrite removes these and nothing else:
# the files and folder _work/ whole, and in data/ and rejects/ only shard files by their names.
PREP_FILES = (STATS_NAME, DATA_CARD_NAME, "_work")
# The job a folder holds (inputs, shard plan, settings, profile): a rerun resumes only the same job.
JOB_FILE = "_work/job.json"
SHARD_FOLDERS = ("data", "rejects")
SHARD_NAME = re.compile(r"part-\d{5}\.parquet(\.tmp)?")


def _foreign_in_shard_folders(out: Path) -> list[str]:
    """Files in data/ and rejects/ that prep did not name: a user's, which --overwrite keeps."""
    return sorted(str(p.relative_to(out)) for folder in SHARD_FOLDERS if (out / folder).is_dir()
                  for p in (out / folder).rglob("*")
                  if not (p.parent == out / folder and SHARD_NAME.fullmatch(p.name) and not p.is_dir()))


def _remove_prep_outputs(out: Path) -> None:
    remove_named(out, PREP_FILES)
    for folder in SHARD_FOLDERS:
        if (out / folder).is_dir():
            remove_named(out / folder, [p.name for p in (out / folder).iterdir() if SHARD_NAME.fullmatch(p.name)])
            (out / folder).rmdir()


def _claim_output(out: Path, fingerprint: dict, overwrite: bool) -> None:
    """Make `out` this run's: fresh, or a resumable earlier run of the same job."""
    run_file = out / JOB_FILE
    ours = {LOCK_NAME}  # the run's own lock, taken before this
    if overwrite and out.exists():
        if not (run_file.exists() or (out / STATS_NAME).exists()) and any(
                p.name not in ours for p in out.iterdir()):
            raise UserError(f"--overwrite: {out} is not a prep output folder (it has no {JOB_FILE} "
                            f"or stats.json), so nothing was deleted; prep only replaces what it wrote. "
                            f"Choose an empty or new --output")
        foreign = _foreign_in_shard_folders(out)
        if foreign:
            shown = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
            raise UserError(f"--overwrite: {out} holds files prep did not write among its shards "
                            f"({shown}); nothing was deleted. Move them out of data/ and rejects/, "
                            f"or choose a new --output")
        _remove_prep_outputs(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(run_file, fingerprint)
        return
    if run_file.exists():
        if json.loads(run_file.read_text(encoding="utf-8")) != fingerprint:
            raise UserError(f"{out} holds a run with other inputs or settings; use another --output, "
                            f"or pass --overwrite to replace it")
        return
    if out.exists() and any(p.name not in ours for p in out.iterdir()):
        raise UserError(f"{out} exists and is not a prep output folder; use an empty or new folder")
    write_json(run_file, fingerprint)


def run_prep(cfg: PrepConfig, *, overwrite: bool = False, show_progress: bool = True) -> dict:
    """Run the whole job and return the merged stats (also in stats.json)."""
    if not cfg.output:
        raise UserError("no output folder: pass --output DIR")
    profile = load_profile(cfg.country)
    out = check_output_allowed(cfg.output, profile)
    cfg = cfg.model_copy(update={"output": str(out), "stages": cfg.stages_for(profile)})
    plan = plan_shards(expand_inputs(cfg.inputs), cfg)
    settings = cfg.model_dump(exclude={"workers", "output", "executor", "ray_address"})
    fingerprint = {"settings": settings, "shards": plan, "profile": profile.model_dump(mode="json")}
    # One prep run per output folder: two started into one raced over the same shard files.
    with FolderLock(out, "prep run", "wait for it to end, or prepare into another --output"):
        _claim_output(out, json.loads(json.dumps(fingerprint)), overwrite)
        shards = [ShardFiles(out, i) for i in range(len(plan))]

        from data_prep.progress import PrepProgress

        executor = make_executor(cfg.executor, cfg.workers, cfg.ray_address)
        try:
            with PrepProgress(len(plan), enabled=show_progress) as progress:
                _run_pass_one(cfg, plan, shards, executor, progress)
                _plan_dedup(cfg, shards, executor)
                _run_pass_two(cfg, shards, executor, progress)
        finally:
            executor.close()
        return _merge(cfg, profile, shards, out)


def _run_pass_one(cfg: PrepConfig, plan: list, shards: list[ShardFiles], executor: Any,
                  progress: Any) -> None:
    """Pass one over the shards not marked done (data_prep.passes.pass_one_steps)."""
    if redone := forget_unreadable(shards):
        print(f"prep: {len(redone)} shard(s) marked done had unreadable files and are done again: "
              f"{', '.join(redone[:10])}", file=sys.stderr)
    cfg_data = cfg.model_dump(mode="json")
    todo = [(i, path, span, cfg_data) for i, (path, span) in enumerate(plan)
            if not shards[i].pass1_done.exists()]
    check_inputs_unchanged(plan, shards)
    progress.start_pass("pass 1: read, normalise, filter, redact", len(plan), len(plan) - len(todo))
    executor.run(pass_one_shard, todo, progress.update)


def _plan_dedup(cfg: PrepConfig, shards: list[ShardFiles], executor: Any) -> None:
    """The dedup plan from every shard's pass-one keys, unless no shard is left for pass two."""
    if all(files.done.exists() for files in shards) or not {"dedup", "near_dedup"} & set(cfg.stages):
        return
    # In a worker: the main process outlives the run and would keep what the plan freed.
    seconds = executor.call(_timed_plan, [s.pass1_docs for s in shards], shards[0].plan.parent,
                            {"exact": "dedup" in cfg.stages, "near": "near_dedup" in cfg.stages,
                             "bands": cfg.near_dedup.bands, "threshold": cfg.near_dedup.verify_threshold})
    write_json(shards[0].plan.parent / "cpu_seconds.json", {"dedup plan": round(seconds, 3)})


def _timed_plan(pass1: list[Path], plan_dir: Path, settings: dict) -> float:
    started = time.process_time()
    plan_dedup(pass1, plan_dir, **settings)
    return time.process_time() - started


def _run_pass_two(cfg: PrepConfig, shards: list[ShardFiles], executor: Any, progress: Any) -> None:
    """Pass two, in fresh workers, over the shards not marked done (data_prep.passes.pass_two_steps)."""
    executor.recycle()
    cfg_data = cfg.model_dump(mode="json")
    todo = [(i, cfg_data) for i, files in enumerate(shards) if not files.done.exists()]
    progress.start_pass("pass 2: deduplicate, write shards", len(shards), len(shards) - len(todo))
    executor.run(pass_two_shard, todo, progress.update)


def _merge(cfg: PrepConfig, profile: CountryProfile, shards: list[ShardFiles], out: Path) -> dict:
    # Folded in one shard at a time: a national crawl has tens of thousands of shards, and
    # their stats read whole would grow the main process with the corpus.
    merged = {name: StageStats() for name in ["read", *cfg.stages]}
    inputs = []
    for files in shards:
        shard = json.loads(files.stats.read_text(encoding="utf-8"))
        for name, data in shard["stages"].items():
            merged[name].merge(StageStats.from_dict(data))
        if shard["input"]:
            inputs.append(shard["input"])
    _write_cpu_seconds(out, shards)
    stats = finalize_stats(merged, inputs, profile, cfg)
    write_stats(out, stats)
    as_dict = stats.model_dump(mode="json", exclude_none=True)
    write_data_card(out / DATA_CARD_NAME, as_dict, profile)
    return as_dict


def _write_cpu_seconds(out: Path, shards: list[ShardFiles]) -> None:
    """_work/cpu_seconds.json: CPU seconds per pass and stage, summed over shards (kept out
    of stats.json, which must come out the same on every run of the same job)."""
    total: dict[str, dict[str, float]] = {"pass 1": {}, "pass 2": {}}
    for name, paths in (("pass 1", [s.pass1_stats for s in shards]), ("pass 2", [s.stats for s in shards])):
        for path in paths:
            for stage, seconds in json.loads(path.read_text(encoding="utf-8")).get("cpu_seconds", {}).items():
                total[name][stage] = round(total[name].get(stage, 0.0) + seconds, 3)
    plan = out / "_work" / "plan" / "cpu_seconds.json"
    if plan.exists():
        total["between the passes"] = json.loads(plan.read_text(encoding="utf-8"))
    write_json(out / "_work" / "cpu_seconds.json", total)
