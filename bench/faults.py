"""Crash-injection campaign (issue 16, item 4): more seeds and kill points than `make test`
runs, both registries, and disk-full under 2-process ZeRO-3. Prints one table, scenario ->
outcome, and exits 1 if any scenario failed.

    .venv/bin/python bench/faults.py                       # ~15 min on 2 cores
    .venv/bin/python bench/faults.py --seeds 1 --only registry
    .venv/bin/python bench/faults.py --seed-base 1700      # other plans; each row prints its seed

Work folder /tmp/countrytune-bench-faults (removed first). Disk full needs root (tmpfs);
OCI needs /usr/bin/docker-registry (scripts/install-services.sh).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from tests.fault_injection import (  # noqa: E402
    TRAIN_RESUMED,
    adapter,
    adapters_equal,
    complete_steps,
    export_command,
    kill_prep,
    kill_push,
    kill_training,
    losses,
    partial_steps,
    plan_table,
    prep_command,
    prep_env,
    prep_kill_plans,
    prep_outputs,
    push_kill_plans,
    run_training,
    train_command,
    train_env,
    train_kill_plans,
    write_corpus,
)

ROWS: list[dict] = []


def row(scenario: str, seed, plan: str, outcome: str, ok: bool, seconds: float) -> None:
    ROWS.append({"scenario": scenario, "seed": seed, "plan / where the kills landed": plan,
                 "outcome": outcome, "result": "ok" if ok else "FAILED", "s": f"{seconds:.0f}"})
    print(f"[faults] {scenario} seed {seed}: {'ok' if ok else 'FAILED'}: {outcome}", flush=True)


def guarded(name: str, fn, *args) -> None:
    """Run one campaign; an exception becomes a FAILED row with its message."""
    t0 = time.monotonic()
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - reported in the table
        traceback.print_exc()
        row(name, "-", "-", f"{type(e).__name__}: {str(e)[:300]}".replace("\n", " "), False,
            time.monotonic() - t0)


def sample_prep(work: Path) -> Path:
    from data_prep.config import PrepConfig
    from data_prep.runner import run_prep

    out = work / "sample-prep"
    run_prep(PrepConfig(inputs=[str(ROOT / "data_prep/sample_corpus/corpus")], output=str(out),
                        country="id", workers=1), overwrite=True, show_progress=False)
    return out


# --- training ------------------------------------------------------------------------------------

def train_campaign(work: Path, prep: Path, seeds: list[int], kills: int, steps: int) -> Path:
    reference = work / "train-reference"
    env = train_env(work / "cache")
    t0 = time.monotonic()
    run_training(train_command(prep, reference, steps=steps), env, work / "train-reference.log")
    print(f"[faults] reference ZeRO-3 run: {time.monotonic() - t0:.0f} s", flush=True)
    for seed in seeds:
        t0 = time.monotonic()
        run = work / f"train-{seed}"
        cmd = train_command(prep, run, steps=steps)
        plans = train_kill_plans(seed, kills, steps)
        try:
            for i, plan in enumerate(plans):
                kill_training(plan, cmd, env, run, work / f"train-{seed}-{i}.log")
            log = run_training(cmd, env, work / f"train-{seed}-final.log")
            last = plans[-1].complete_after
            resumed_ok = TRAIN_RESUMED.findall(log) == ([str(last)] if last else [])
            diff = adapters_equal(adapter(reference), adapter(run))
            same_losses = losses(run) == losses(reference)
            ok = resumed_ok and not diff and same_losses and all(p.launcher_exit_s is not None for p in plans)
            where = "; ".join(f"{p.during} {p.step}+{p.delay_s}s kill {p.victim}: {p.where()}, resumed from "
                              f"{p.complete_after}, job down in {p.launcher_exit_s} s{' ' + p.note if p.note else ''}"
                              for p in plans)
            outcome = (f"final adapter {'bit-identical' if not diff else 'DIFFERS in ' + str(diff[:3])}, "
                       f"losses {'identical' if same_losses else 'DIFFER'}, "
                       f"{'resumed from the newest complete checkpoint' if resumed_ok else 'WRONG resume point'}")
            row(f"train ZeRO-3 x2, {kills} kills", seed, where, outcome, ok, time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            row(f"train ZeRO-3 x2, {kills} kills", seed, json.dumps([p.__dict__ for p in plans])[:300],
                f"{type(e).__name__}: {str(e)[:300]}".replace("\n", " "), False, time.monotonic() - t0)
    return reference


def disk_full_zero3(work: Path, prep: Path, reference: Path, steps: int) -> None:
    import os

    t0 = time.monotonic()
    name = "disk full in a ZeRO-3 checkpoint write"
    if os.geteuid() != 0:
        row(name, "-", "-", "skipped: needs root for a tmpfs", True, 0)
        return
    run = work / "train-diskfull"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    size = sum(p.stat().st_size for p in (reference / "checkpoints").glob("step-*/**/*") if p.is_file()) // 2
    env = train_env(work / "cache")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 2.5) // 1024}k", "tmpfs", str(ckpts)], check=True)
    try:
        cmd = train_command(prep, run, steps=steps)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        message = next((x for x in proc.stderr.splitlines() if "could not be written" in x), "")
        before = complete_steps(run)
        partial = partial_steps(run)
        subprocess.run(["mount", "-o", f"remount,size={size * 20 // 1024}k", str(ckpts)], check=True)
        log = run_training(cmd, env, work / "train-diskfull-final.log")
        diff = adapters_equal(adapter(reference), adapter(run))
        resumed = TRAIN_RESUMED.findall(log)
        ok = (proc.returncode != 0 and "no space left" in message and not partial and before
              and resumed == [str(before[-1])] and not diff and losses(run) == losses(reference))
        row(name, "-", f"checkpoints on a {int(size * 2.5) // 1024} KiB tmpfs (2.5 checkpoints, keep 2)",
            f"exit {proc.returncode}: \"{message.strip()[:160]}...\"; complete after: {before}, partial left: "
            f"{partial}; after remount resumed from step {resumed}, adapter "
            f"{'bit-identical' if not diff else 'DIFFERS'}", ok, time.monotonic() - t0)
    finally:
        subprocess.run(["umount", "-l", str(ckpts)], check=False)


# --- prep ----------------------------------------------------------------------------------------

def prep_campaign(work: Path, seeds: list[int], kills: int, files: int, docs: int) -> None:
    from data_prep.config import PrepConfig
    from data_prep.runner import run_prep

    corpus = work / "prep-corpus"
    records = write_corpus(corpus, files=files, docs=docs)
    straight = work / "prep-straight"
    run_prep(PrepConfig(country="id", inputs=[str(corpus)], output=str(straight), workers=2), show_progress=False)
    expected = prep_outputs(straight)
    for seed in seeds:
        t0 = time.monotonic()
        out = work / f"prep-{seed}"
        plans = prep_kill_plans(seed, kills, files)
        for i, plan in enumerate(plans):
            kill_prep(plan, prep_command(corpus, out), out, work / f"prep-{seed}-{i}.log")
        subprocess.run(prep_command(corpus, out), cwd=ROOT, env=prep_env(), check=True, capture_output=True)
        got = prep_outputs(out)
        differ = sorted(k for k in set(expected) | set(got) if expected.get(k) != got.get(k))
        totals = json.loads(got["stats.json"])["totals"]
        balanced = totals["records_in"] == records == totals["docs_out"] + totals["rejected"]
        where = "; ".join(f"after {p.after_markers} markers+{p.delay_s}s (killed at {p.markers_at_kill}"
                          f"/{2 * files}{', already finished' if p.finished_first else ''})" for p in plans)
        row(f"prep x2 workers, {kills} kills", seed, where,
            f"{len(got)} output files {'byte-identical' if not differ else 'DIFFER: ' + str(differ[:3])}; "
            f"{totals['records_in']} in = {totals['docs_out']} kept + {totals['rejected']} rejected",
            not differ and balanced, time.monotonic() - t0)


# --- registries ----------------------------------------------------------------------------------

def verify_all(registry: str, where: Path) -> dict[str, str]:
    from tests.test_faults import _verify_all

    return _verify_all(registry, where)


def at_once(run: Path, registry: str, versions: list[str]) -> list[subprocess.CompletedProcess]:
    from tests.test_faults import _export_at_once

    return _export_at_once(run, registry, versions)


def registry_campaign(kind: str, uri: str, uploads, versions_dir, work: Path, run: Path,
                      seeds: list[int], rounds: int, kills: int) -> None:
    t0 = time.monotonic()
    outcomes = []
    for r in range(rounds):
        results = at_once(run, uri, [f"same{r}", f"same{r}"])
        outcomes.append(tuple(sorted(x.returncode for x in results)))
        losers = [x.stderr for x in results if x.returncode]
    problems = verify_all(uri, work / f"{kind}-pulled")
    ok = all(o == (0, 2) for o in outcomes) and not problems
    row(f"{kind}: 2 exports of one version at once", "-", f"{rounds} rounds",
        f"exit codes per round {sorted(set(outcomes))}; loser says: "
        f"\"{(losers[-1].strip().splitlines() or [''])[-1][:140] if losers else '-'}\"; pulls verified: "
        f"{'all' if not problems else problems}", ok, time.monotonic() - t0)

    t0 = time.monotonic()
    from pipeline.registry.refs import Ref
    from pipeline.registry import open_registry

    results = at_once(run, uri, ["two.a", "two.b"])
    entry = open_registry(uri).versions(Ref("id", "tiny-cpu"))
    problems = verify_all(uri, work / f"{kind}-pulled")
    ok = [x.returncode for x in results] == [0, 0] and {"two.a", "two.b"} <= set(entry.versions) and not problems
    row(f"{kind}: 2 versions at once", "-", "two.a and two.b",
        f"exit codes {[x.returncode for x in results]}; latest = {entry.latest}; every version pulls verified: "
        f"{not problems}", ok, time.monotonic() - t0)

    for seed in seeds:
        t0 = time.monotonic()
        problems, reads, stop = {}, [0], threading.Event()

        def reader():
            while not stop.is_set():
                problems.update(verify_all(uri, work / f"{kind}-reader"))
                reads[0] += 1

        thread = threading.Thread(target=reader)
        thread.start()
        plans = push_kill_plans(seed, kills, max_delay_s=0.03)
        for plan in plans:
            plan.version = f"s{seed}.{plan.version}"
            kill_push(plan, export_command(run, uri, plan.version), started=uploads,
                      published=lambda v=plan.version: versions_dir(v))
        stop.set()
        thread.join()
        after = subprocess.run(export_command(run, uri, f"s{seed}.after"), cwd=ROOT, env=prep_env(),
                               capture_output=True, text=True)
        entry = open_registry(uri).versions(Ref("id", "tiny-cpu"))
        problems.update(verify_all(uri, work / f"{kind}-pulled"))
        landed = {w: sum(p.landed == w for p in plans) for w in sorted({p.landed for p in plans})}
        ok = not problems and after.returncode == 0 and entry.latest == f"s{seed}.after"
        row(f"{kind}: push killed midway, reader pulling meanwhile", seed,
            f"{kills} kills up to 30 ms after the push began: {landed}",
            f"{reads[0]} full list+pull rounds by the reader, half-written versions seen: "
            f"{len(problems)}{' ' + str(problems)[:200] if problems else ''}; next push ok, latest whole",
            ok, time.monotonic() - t0)


def local_registry(work: Path, run: Path, seeds: list[int], rounds: int, kills: int) -> None:
    root = work / "registry-local"
    package = root / "id" / "tiny-cpu"
    registry_campaign("local", str(root), lambda: any(package.glob(".incoming-*")),
                      lambda v: (package / v).is_dir(), work, run, seeds, rounds, kills)


def oci_registry(work: Path, run: Path, seeds: list[int], rounds: int, kills: int) -> None:
    from oci_servers import REGISTRY_BIN, registry

    if not Path(REGISTRY_BIN).is_file():
        row("oci", "-", "-", f"skipped: {REGISTRY_BIN} not installed", True, 0)
        return
    root = work / "registry-oci"
    with registry(root) as base:
        uri = f"oci://{base.removeprefix('http://')}/countrytune"
        repo = root / "storage/docker/registry/v2/repositories/countrytune/id/tiny-cpu"
        registry_campaign("oci", uri, lambda: any((repo / "_uploads").glob("*")),
                          lambda v: (repo / "_manifests/tags" / v / "current/link").is_file(),
                          work, run, seeds, rounds, kills)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="seeds per scenario (default 3)")
    p.add_argument("--seed-base", type=int, default=1600)
    p.add_argument("--kills", type=int, default=4, help="training and prep kills per seed (default 4)")
    p.add_argument("--steps", type=int, default=10, help="training steps per run (default 10)")
    p.add_argument("--only", choices=["train", "prep", "registry"], action="append")
    p.add_argument("--work", type=Path, default=Path("/tmp/countrytune-bench-faults"))
    args = p.parse_args()
    only = set(args.only or ["train", "prep", "registry"])
    seeds = [args.seed_base + i for i in range(args.seeds)]
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    started = time.monotonic()
    prep = sample_prep(args.work)
    reference = None
    if "train" in only or "registry" in only:
        if "train" in only:
            reference = train_campaign(args.work, prep, seeds, args.kills, args.steps)
            guarded("disk full", disk_full_zero3, args.work, prep, reference, args.steps)
        else:
            reference = args.work / "train-reference"
            run_training(train_command(prep, reference, steps=args.steps), train_env(args.work / "cache"),
                         args.work / "train-reference.log")
    if "prep" in only:
        guarded("prep", prep_campaign, args.work, seeds, args.kills, 6, 2500)
    if "registry" in only:
        guarded("local registry", local_registry, args.work, reference, seeds, 5, 8)
        guarded("oci registry", oci_registry, args.work, reference, seeds, 5, 8)
    for f in Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"):
        f.unlink(missing_ok=True)
    print()
    print(plan_table(ROWS))
    failed = sum(r["result"] != "ok" for r in ROWS)
    print(f"\n{len(ROWS)} scenarios, {failed} failed, {time.monotonic() - started:.0f} s "
          f"(COUNTRYTUNE_FAULT seeds {seeds})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
