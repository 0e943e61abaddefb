"""On-policy preference pairs: `countrytune preference-pairs`.

The SFT adapter answers prompts from the country's own instruction data several times each
(sampling); the verifier (verifier.py: the right language by prep's identifier, then the right
label or the higher chrF++ against the reference) ranks the answers; the best and the worst
become a pair, each with the verifier's judgement. The spec is YAML (`PairsSpec`, e.g.
recipes/id/preference-pairs-multitask.yaml), the adapter a finished SFT run:

    countrytune preference-pairs recipes/id/preference-pairs-multitask.yaml \\
        --adapter runs/id-smollm2-multitask --output out/pairs-multitask

With `contrast_pairs`, each translation prompt also gives a contrast pair (contrast.py): its
reference against the same sentence in another language.

A prompt that yields no pair (every answer judged alike, ...) is a reject with its reason and
its samples in rejects/rejects.jsonl, and so is a contrast pair that cannot be made:
prompts + contrast pairs tried = pairs written + rejected. Output,
whole or not at all: data/train-00000.jsonl (countrytune/artifacts/preference.py),
rejects/rejects.jsonl, stats.json of kind `preference-pairs` (with the adapter's SHA-256 and
the tallies of why each side was picked, which training copies into run.json and export into
the manifest and model card) and DATA_CARD.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field

from countrytune.artifacts.preference import KIND, check_pair, pair_line
from countrytune.artifacts.prep_output import DATA_CARD_NAME, STATS_NAME, PrepStats, is_prep_output, \
    open_prep_output, read_stats, write_stats
from countrytune.atomic import atomic_dir
from countrytune.errors import UserError
from countrytune.schema import Schema, read_yaml, validate
from pipeline.preference.contrast import ParallelSentences, contrast
from pipeline.preference.verifier import ORDER, Prompt, Ranked, Verifier


class PairsSpec(Schema):
    """How to make preference pairs from instruction data."""

    name: str
    country: str
    """Country profile: its language identifier judges the answers' language."""
    prompts: str
    """A `countrytune sft-data` output: its chat records' prompts are asked again, their answers
    are the references."""
    tasks: list[str] | None = None
    """Tasks to take (the part of a record id before the first ':', e.g. translation); None: all."""
    languages: list[str] | None = None
    """Languages of the records to take (the answer's language); None: all."""
    max_prompts_per_language: int = Field(100, ge=1)
    """Prompts per language and task, picked by a hash of the record id (the same every run)."""
    samples_per_prompt: int = Field(4, ge=2)
    """Answers sampled per prompt; the verifier keeps the best and the worst."""
    temperature: float = Field(0.9, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(8, ge=1)
    """Prompts per generate call (each with samples_per_prompt answers)."""
    seed: int = 0
    min_chrf_gap: float = Field(2.0, ge=0)
    """Translations both in the language asked and finished: the chosen one's sentence chrF++
    must beat the rejected one's by at least this much, or the prompt gives no pair
    (`chrf_too_close`); a gap of a point or two is within a sentence score's noise."""
    chosen_fallback: Literal["reference", "skip"] = "reference"
    """When no sample passes the verifier: the task's own answer is the chosen one (reference),
    or the prompt gives no pair (skip, a `no_sample_passed` reject)."""
    contrast_pairs: bool = False
    """Translation prompts give one more pair each: the reference against the same sentence's
    reference in the language the samples drifted into (else one of `languages`). Needs
    parallel translation records (the same sentence id in several languages)."""


def select_prompts(spec: PairsSpec, records: list[dict]) -> list[Prompt]:
    """The prompts to ask, per (task, language) the first `max_prompts_per_language` by hash."""
    picked: dict[tuple[str, str], list[tuple[bytes, Prompt]]] = {}
    for rec in records:
        task = rec["id"].split(":", 1)[0]
        if (spec.tasks and task not in spec.tasks) or (spec.languages and rec["lang"] not in spec.languages):
            continue
        kind = "classification" if rec.get("label") is not None else "translation"
        prompt = Prompt(rec["id"], rec["lang"], kind, rec["messages"][:-1], rec["messages"][-1]["content"],
                        rec.get("template", ""))
        rank = hashlib.blake2b(f"{spec.seed}:{rec['id']}".encode(), digest_size=8).digest()
        picked.setdefault((task, rec["lang"]), []).append((rank, prompt))
    out = []
    for key in sorted(picked):
        out += [p for _, p in sorted(picked[key], key=lambda x: x[0])[:spec.max_prompts_per_language]]
    return out


def read_prompt_records(spec: PairsSpec):
    """The `countrytune sft-data` output the spec names, and its chat records."""
    source = open_prep_output(spec.prompts, f"prompts {spec.prompts}")
    if source.stats.kind != "sft-data":
        raise UserError(f"prompts {spec.prompts}: a {source.stats.kind} output; give a `countrytune sft-data` output")
    return source, [json.loads(line) for f in source.data_files()
                    for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]


def build(spec: PairsSpec, adapter_run: Path, out: Path, *, overwrite: bool = False, log=print,
          progress: bool = True) -> dict:
    """Sample, rank and write the pairs of `spec` to `out`; returns stats.json's content."""
    from countrytune.hashing import sha256_file
    from pipeline.preference.sampling import Sampler, policy_of_run

    source, records = read_prompt_records(spec)
    prompts = select_prompts(spec, records)
    if not prompts:
        raise UserError(f"no records of {spec.prompts} match tasks {spec.tasks} and languages {spec.languages}")
    policy = policy_of_run(adapter_run)
    _claim(out, overwrite)
    verifier = Verifier(spec.country, spec.chosen_fallback, spec.min_chrf_gap)
    sampler = Sampler(policy, temperature=spec.temperature, top_p=spec.top_p,
                      max_new_tokens=spec.max_new_tokens, seed=spec.seed)
    tally = Tally()
    parallel = ParallelSentences(records) if spec.contrast_pairs else None
    with atomic_dir(out) as tmp:
        (tmp / "data").mkdir()
        (tmp / "rejects").mkdir()
        with (tmp / "data" / "train-00000.jsonl").open("w", encoding="utf-8") as pairs, \
                (tmp / "rejects" / "rejects.jsonl").open("w", encoding="utf-8") as rejects, \
                _bar(len(prompts), progress) as advance:
            for b in range(0, len(prompts), spec.batch_size):
                batch = prompts[b:b + spec.batch_size]
                for prompt, samples in zip(batch, sampler.sample([p.prompt for p in batch],
                                                                 spec.samples_per_prompt, b // spec.batch_size)):
                    answers = [s.text for s in samples]
                    ranked = verifier.rank(prompt, answers, finished=[s.finished for s in samples])
                    if ranked.reason is None and (problem := check_pair(_pair(prompt, ranked))) is not None:
                        ranked = Ranked(None, None, reason=problem[0])
                    tally.add(prompt, ranked, answers)
                    if ranked.reason is not None:
                        rejects.write(json.dumps({"where": prompt.id, "lang": prompt.lang, "reason": ranked.reason,
                                                  "samples": answers, "finished": [s.finished for s in samples]},
                                                 ensure_ascii=False) + "\n")
                    else:
                        pairs.write(pair_line(_pair(prompt, ranked)))
                    if parallel is not None and prompt.kind == "translation":
                        other, pair = contrast(prompt, ranked, parallel, spec.languages, spec.seed)
                        tally.add(prompt, pair, [], contrast=True)
                        if pair.reason is not None:
                            rejects.write(json.dumps({"where": f"contrast:{prompt.id}", "lang": prompt.lang,
                                                      "reason": pair.reason}, ensure_ascii=False) + "\n")
                        else:
                            pairs.write(pair_line(_pair(prompt, pair, f"contrast:{prompt.id}:{other}")))
                advance(len(batch))
        stats = _stats(spec, source, policy, sha256_file(policy.adapter / "adapter_model.safetensors"), tally)
        write_stats(tmp, validate(PrepStats, stats, f"preference-pairs {spec.name} (a bug)"))
        (tmp / DATA_CARD_NAME).write_text(data_card(stats), encoding="utf-8")
    log(f"{tally.pairs:,} pairs from {len(prompts):,} prompts, {tally.rejected:,} rejected "
        f"({', '.join(f'{k} {v}' for k, v in sorted(tally.reasons.items())) or 'none'}) -> {out}")
    return stats


def _pair(prompt: Prompt, ranked, pair_id: str | None = None) -> dict:
    task = prompt.id.split(":", 1)[0]
    return {"id": pair_id or f"pair:{prompt.id}", "lang": prompt.lang, "task": task, "prompt": prompt.prompt,
            "chosen": ranked.chosen[0], "rejected": ranked.rejected[0],
            "chosen_judgement": ranked.chosen[1].model_dump(), "rejected_judgement": ranked.rejected[1].model_dump(),
            "template": prompt.template, "source": prompt.id}


class Tally:
    """Counts for stats.json: per language prompts and contrast pairs tried, pairs, rejects; why
    each side was picked."""

    def __init__(self) -> None:
        self.per_lang: dict[str, Counter] = {}
        self.chosen_because, self.rejected_because, self.reasons = Counter(), Counter(), Counter()
        self.pairs = self.rejected = self.prompts = 0
        self.contrasts = Counter()  # tried, written

    def add(self, prompt: Prompt, ranked, answers: list[str], contrast: bool = False) -> None:
        c = self.per_lang.setdefault(prompt.lang, Counter())
        c["in"] += 1
        c["chars"] += sum(len(a) for a in answers)
        self.contrasts["tried"] += contrast
        self.prompts += not contrast
        self.contrasts["written"] += contrast and ranked.reason is None
        if ranked.reason is not None:
            c["rejected"] += 1
            self.rejected += 1
            self.reasons[ranked.reason] += 1
            return
        c["out"] += 1
        self.pairs += 1
        self.chosen_because[ranked.chosen_because] += 1
        self.rejected_because[ranked.rejected_because] += 1


def _stats(spec: PairsSpec, source, policy, adapter_sha: str, tally: Tally) -> dict:
    return {
        "kind": KIND, "name": spec.name, "country": spec.country, "profile": spec.country,
        "description": f"on-policy preference pairs from {spec.prompts}", "licence": source.stats.licence,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": spec.model_dump(mode="json"),
        "inputs": [{"path": str(f.resolve()), "sha256": _sha(f), "bytes": f.stat().st_size}
                   for f in source.data_files()],
        "totals": {"records_in": tally.pairs + tally.rejected, "docs_out": tally.pairs, "rejected": tally.rejected},
        "rejected": dict(tally.reasons),
        "languages": {lang: {"docs_in": c["in"], "docs_out": c["out"], "rejected": c["rejected"],
                             "chars_sampled": c["chars"]} for lang, c in sorted(tally.per_lang.items())},
        "preference": {
            "adapter": {"path": str(policy.adapter.resolve()), "weights_sha256": adapter_sha},
            "base": policy.base, "samples_per_prompt": spec.samples_per_prompt,
            "sampling": {"temperature": spec.temperature, "top_p": spec.top_p, "max_new_tokens": spec.max_new_tokens,
                         "seed": spec.seed},
            "verifier": list(ORDER), "chosen_fallback": spec.chosen_fallback, "min_chrf_gap": spec.min_chrf_gap,
            "prompts": tally.prompts,
            "contrast_pairs": {"tried": tally.contrasts["tried"], "written": tally.contrasts["written"]},
            "chosen_because": dict(tally.chosen_because), "rejected_because": dict(tally.rejected_because),
        },
    }


def _sha(path: Path) -> str:
    from countrytune.hashing import sha256_file

    return sha256_file(path)


def _claim(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    ours = is_prep_output(out) and read_stats(out / STATS_NAME).kind == KIND
    if not overwrite or not ours:
        raise UserError(f"--output {out} exists; pass --overwrite to rebuild it" if ours else
                        f"--output {out} exists and is not a preference-pairs output; choose a new folder")


def data_card(stats: dict) -> str:
    p, t = stats["preference"], stats["totals"]
    contrasts = p.get("contrast_pairs", {}).get("tried", 0)
    lines = [f"# Preference pairs: {stats['name']}", "",
             f"{t['docs_out']:,} pairs from {t['records_in'] - contrasts:,} prompts of `{stats['config']['prompts']}`"
             + (f" and {contrasts:,} contrast pairs tried (a translation's reference against the same sentence in "
                f"another language; {p['contrast_pairs']['written']:,} written)" if contrasts else "") +
             f" ({t['rejected']:,} gave no pair: "
             f"{', '.join(f'{k} {v}' for k, v in sorted(stats['rejected'].items())) or 'none'}; each in "
             f"rejects/rejects.jsonl with its samples).", "",
             f"{p['samples_per_prompt']} answers per prompt sampled from the adapter `{p['adapter']['path']}` "
             f"(weights SHA-256 `{p['adapter']['weights_sha256']}`), temperature {p['sampling']['temperature']:g}, "
             f"top-p {p['sampling']['top_p']:g}; ranked by: " + "; then ".join(p["verifier"]) + ".", "",
             f"| language | {'prompts + contrasts' if contrasts else 'prompts'} | pairs | rejected |",
             "|---|---:|---:|---:|"]
    lines += [f"| {lang} | {c['docs_in']} | {c['docs_out']} | {c['rejected']} |" for lang, c in stats["languages"].items()]
    lines += ["", "| why chosen | pairs |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(p["chosen_because"].items())]
    lines += ["", "| why rejected | pairs |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(p["rejected_because"].items())]
    return "\n".join(lines) + "\n"


class _bar:
    def __init__(self, total: int, enabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("preference pairs"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), disable=not enabled)
        self.task = self.bar.add_task("pairs", total=total)

    def __enter__(self):
        self.bar.__enter__()
        return lambda n: self.bar.advance(self.task, n)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preference-pairs", help="sample answers from an SFT adapter, rank them, write DPO pairs",
                       description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", type=Path, help="a PairsSpec YAML (e.g. recipes/id/preference-pairs-multitask.yaml)")
    p.add_argument("--adapter", type=Path, required=True, help="the finished SFT training run to sample from")
    p.add_argument("--output", type=Path, required=True, help="folder to write (data/, rejects/, stats.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier preference-pairs output there")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    spec = validate(PairsSpec, read_yaml(args.spec), str(args.spec))
    build(spec, args.adapter, args.output, overwrite=args.overwrite, progress=not args.no_progress,
          log=lambda m: print(f"[countrytune preference-pairs] {m}", file=sys.stderr, flush=True))
    return 0
