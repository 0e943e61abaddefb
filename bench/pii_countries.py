"""PII recall and clean text kept for Thailand, Saudi Arabia and the UAE, as a Markdown table.

The cases are tests/test_pii_countries.py's (numbers generated with their check digits, in
sentences written there, ASCII and native digits); each country's profile redacts them through
data_prep.pii.PiiRedactor. Recall: share of positives that come back with exactly the typed
placeholder; clean kept: share of negatives that come back untouched. Goal 0.99 each.

The last rows are what no check can tell apart: random numbers of an ID's exact shape (prefix,
length) next to no word, of which about one in ten passes the check digit by chance.

    .venv/bin/python bench/pii_countries.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from countrytune.profiles import load_profile  # noqa: E402
from data_prep.pii import PiiRedactor  # noqa: E402
from tests.test_pii_countries import COUNTRIES, GOAL, Row, _rand, measure  # noqa: E402

# Same shape as an ID, no context: "reference 1234567890123".
LOOKALIKES = {
    "th": ("13 digits, first 1-8", "รหัสอ้างอิง {n}", lambda r: r.choice("12345678") + _rand(r, 12)),
    "sa": ("10 digits, first 1 or 2", "الرقم {n}", lambda r: r.choice("12") + _rand(r, 9)),
    "ae": ("784, a birth year, 8 digits", "الرقم {n}", lambda r: f"784{r.randint(1940, 2020)}" + _rand(r, 8)),
}


def table(seeds: int) -> tuple[list[str], bool]:
    lines = ["| country | type | cases | recall | clean kept |", "|---|---|---:|---:|---:|"]
    ok = True
    for country in COUNTRIES:
        merged: dict[tuple[str, bool], Row] = {}
        for seed in range(seeds):
            rows, _ = measure(country, seed)
            for row in rows:
                into = merged.setdefault((row.kind, row.positive), Row(country, row.kind, 0, 0, row.positive))
                into.cases += row.cases
                into.passed += row.passed
        for positive in (True, False):
            for row in (r for r in merged.values() if r.positive == positive):
                rate = f"{row.passed / row.cases:.3f}"
                lines.append(f"| {country} | {row.kind} | {row.cases} | {rate if positive else ''} | "
                             f"{'' if positive else rate} |")
        pos = [r for r in merged.values() if r.positive]
        neg = [r for r in merged.values() if not r.positive]
        recall = sum(r.passed for r in pos) / sum(r.cases for r in pos)
        kept = sum(r.passed for r in neg) / sum(r.cases for r in neg)
        ok &= recall >= GOAL and kept >= GOAL
        lines.append(f"| **{country}** | **all** (positives / negatives) | "
                     f"{sum(r.cases for r in pos)} / {sum(r.cases for r in neg)} | **{recall:.3f}** | **{kept:.3f}** |")
    return lines, ok


def lookalikes(count: int) -> list[str]:
    lines = ["", "| country | random number of an ID's shape, no context | cases | redacted |", "|---|---|---:|---:|"]
    for country in COUNTRIES:
        shape, sentence, make = LOOKALIKES[country]
        redactor, rng = PiiRedactor(load_profile(country).pii), random.Random(0)
        hit = sum(bool(redactor.redact(sentence.format(n=make(rng)))[1]) for _ in range(count))
        lines.append(f"| {country} | {shape} | {count} | {hit / count:.3f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="case sets generated per country")
    args = parser.parse_args()
    started = time.perf_counter()
    lines, ok = table(args.seeds)
    lines += lookalikes(2000)
    print("\n".join(lines))
    print(f"\n{time.perf_counter() - started:.1f} s; goal {GOAL} met: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
