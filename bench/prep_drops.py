"""What each prep stage drops on real regional-language text: the README's table.

Runs `countrytune prep` on each NusaParagraph file of ../shared/data/nusa-writes (text
written by native speakers, so every drop there is a cost) and on the NusaX sentences,
one language at a time, and prints a Markdown table of documents kept and dropped.

    .venv/bin/python bench/prep_drops.py [--data ../shared/data] [--out /tmp/prep-drops]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from data_prep.config import PrepConfig
from data_prep.runner import run_prep

NUSAX_CODES = {"indonesian": "ind", "javanese": "jav", "sundanese": "sun", "minangkabau": "min",
               "balinese": "ban", "banjarese": "bjn", "acehnese": "ace", "buginese": "bug",
               "madurese": "mad"}


def corpora(data: Path) -> list[tuple[str, str, list[str]]]:
    out = []
    for path in sorted((data / "nusa-writes").glob("paragraph-*-valid.csv")):
        code = path.stem.split("-")[1]
        out.append(("NusaParagraph", code, [str(path)]))
    for name, code in NUSAX_CODES.items():
        folder = data / "nusax" / "sentiment" / name
        if folder.exists():
            out.append(("NusaX", code, [str(p) for p in sorted(folder.glob("*.csv"))]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="prep-drops-"))
    rows = []
    for corpus, code, inputs in corpora(args.data):
        target = out / f"{corpus}-{code}"
        shutil.rmtree(target, ignore_errors=True)
        cfg = PrepConfig(country="id", inputs=inputs, output=str(target), workers=1,
                         reader={"default_lang": code})
        stats = run_prep(cfg, show_progress=False)
        t = stats["totals"]
        dropped = {name: s["rejected"] for name, s in stats["stages"].items()}
        reasons = "; ".join(f"{stage}: " + ", ".join(f"{r} {n}" for r, n in rs.items())
                            for stage, rs in dropped.items() if rs) or "-"
        rows.append(f"| {corpus} | {code} | {t['records_in']} | {t['docs_out']} | "
                    f"{100 * t['docs_out'] / t['records_in']:.1f} | {reasons} |")
    print("| corpus | lang | docs in | kept | kept % | dropped (stage: reason count) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
