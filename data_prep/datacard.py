"""Merged run statistics (`stats.json`) and the human-readable `DATA_CARD.md`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from countrytune.artifacts.prep_output import PrepStats
from countrytune.software import PREP, software_versions
from countrytune.profiles import CountryProfile
from data_prep.config import PrepConfig
from data_prep.step import BalanceError, StageStats


def finalize_stats(stages: dict[str, StageStats], inputs: list[dict], profile: CountryProfile,
                   cfg: PrepConfig) -> PrepStats:
    """Check that every document is accounted for, then assemble stats.json."""
    order = list(stages)
    for name in order:
        stages[name].check_balance(name)
    for before, after in zip(order, order[1:]):
        if stages[before].total("docs_out") != stages[after].total("docs_in"):
            raise BalanceError(f"{before} passed on {stages[before].total('docs_out')} documents but "
                               f"{after} received {stages[after].total('docs_in')}")
    first, last = stages[order[0]], stages[order[-1]]
    languages = _languages(stages, order)
    rejected = sum(sum(s.rejected().values()) for s in stages.values())
    totals = {"records_in": first.total("docs_in"), "docs_out": last.total("docs_out"),
              "rejected": rejected, "chars_out": last.total("chars_out")}
    if totals["records_in"] != totals["docs_out"] + rejected:
        raise BalanceError(f"run: {totals}")
    pii = dict(stages["pii"].counters) if "pii" in stages else {}
    return PrepStats.model_validate({
        "country": profile.country,
        "profile": profile.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "stages_run": order,
        "inputs": inputs,
        "totals": totals,
        "stages": {name: {"docs_in": s.total("docs_in"), "docs_out": s.total("docs_out"),
                          "chars_in": s.total("chars_in"), "chars_out": s.total("chars_out"),
                          "rejected": dict(sorted(s.rejected().items())), **s.to_dict()}
                   for name, s in stages.items()},
        "languages": languages,
        "pii": pii,
        "egress": egress(cfg),
        "config": cfg.model_dump(mode="json"),
        "software": software_versions(PREP),
    })


def egress(cfg: PrepConfig) -> list[str]:
    """What a prep run sends off the machine, in words: the documents, when Ray workers run on
    another host; nothing otherwise (inputs are read, the output folder is local)."""
    from urllib.parse import urlsplit

    from countrytune.locations import LOOPBACK_HOSTS

    address = cfg.ray_address if cfg.executor == "ray" else None
    if not address or address == "auto":
        return []  # a Ray started here, or the one already running on this node
    host = urlsplit(address if "://" in address else f"ray://{address}").hostname or ""
    if host in LOOPBACK_HOSTS:
        return []
    return [f"documents (raw and cleaned text) and the prep config to the Ray cluster at {address}"]


def _languages(stages: dict[str, StageStats], order: list[str]) -> dict[str, dict]:
    """Per language: documents in, kept, characters kept, drops by stage and reason.

    Without language ID a document's language is the one it came with. With it, the
    languages are the ones language ID found: its counters say how many it tagged and
    dropped per language, and drops before it are shown under `und` (not yet known)."""
    languages: dict[str, dict] = {}

    def entry(lang: str) -> dict:
        return languages.setdefault(lang, {"docs_in": 0, "docs_out": 0, "chars_out": 0, "rejected": {}})

    def add_drop(lang: str, stage: str, reason: str, n: int) -> None:
        reasons = entry(lang)["rejected"].setdefault(stage, {})
        reasons[reason] = reasons.get(reason, 0) + n

    found_at = order.index("langid") if "langid" in order else None
    if found_at is None:
        for lang, row in stages[order[0]].by_lang.items():
            entry(lang)["docs_in"] = row["docs_in"]
    else:
        for key, n in stages["langid"].counters.items():
            kind, _, rest = key.partition(":")
            if kind == "tagged":
                entry(rest)["docs_in"] += n
            elif kind == "dropped":
                lang, _, reason = rest.partition(":")
                entry(lang)["docs_in"] += n
                add_drop(lang, "langid", reason, n)
    for i, name in enumerate(order):
        if found_at is not None and i == found_at:
            continue
        for lang, row in stages[name].by_lang.items():
            before_langid = found_at is not None and i < found_at
            shown = "und" if before_langid else lang
            for reason, n in row["rejected"].items():
                if before_langid:
                    entry("und")["docs_in"] += n
                add_drop(shown, name, reason, n)
    for lang, row in stages[order[-1]].by_lang.items():
        entry(lang)["docs_out"] = row["docs_out"]
        entry(lang)["chars_out"] = row["chars_out"]
    for row in languages.values():
        row["rejected"] = {stage: dict(sorted(r.items())) for stage, r in row["rejected"].items()}
    return dict(sorted(languages.items()))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    fmt = lambda v: f"{v:,}" if isinstance(v, int) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_data_card(stats: dict[str, Any], profile: CountryProfile) -> str:
    names = {lang.code: lang.name for lang in profile.languages}
    t = stats["totals"]
    parts = [
        f"# Data card: {profile.name} ({stats['country']})",
        f"Prepared {stats['created']} by countrytune {stats['software']['countrytune']}; "
        f"stages: read, {', '.join(stats['stages_run'][1:]) or '(none)'}, write.",
        f"**{t['records_in']:,}** records in, **{t['docs_out']:,}** documents kept "
        f"({t['chars_out']:,} characters), **{t['rejected']:,}** rejected "
        f"(written with their reasons under `rejects/`; they hold text before PII redaction: "
        f"store them only where the profile allows: {', '.join(profile.storage.allowed_output_locations)}).",
        "## Stages",
        _table(["stage", "docs in", "kept", "rejected", "chars in", "chars out", "reasons"],
               [[name, s["docs_in"], s["docs_out"], s["docs_in"] - s["docs_out"], s["chars_in"],
                 s["chars_out"], ", ".join(f"{r} {n:,}" for r, n in s["rejected"].items()) or "-"]
                for name, s in stats["stages"].items()]),
        "## Languages",
        _table(["language", "code", "docs in", "kept", "kept %", "chars kept", "dropped by stage"],
               [[names.get(code, "(not in profile)"), code, row["docs_in"], row["docs_out"],
                 f"{100 * row['docs_out'] / row['docs_in']:.1f}" if row["docs_in"] else "-",
                 row["chars_out"],
                 "; ".join(f"{stage}: " + ", ".join(f"{r} {n:,}" for r, n in reasons.items())
                           for stage, reasons in row["rejected"].items()) or "-"]
                for code, row in stats["languages"].items()]),
    ]
    if "pii" in stats["stages_run"]:
        parts += ["## Personal data redacted",
                  _table(["type", "count"], [[k, v] for k, v in sorted(stats["pii"].items())])
                  if stats["pii"] else "None found."]
    counters = {name: s["counters"] for name, s in stats["stages"].items()
                if s["counters"] and name != "pii"}
    if counters:
        parts += ["## Other counts",
                  _table(["stage", "what", "documents"],
                         [[name, k, v] for name, c in counters.items() for k, v in c.items()])]
    parts += ["## What left the machine",
              "\n".join(f"- {line}" for line in stats.get("egress", [])) or
              "Nothing: prep read its inputs and wrote this folder on this machine, with no network use."]
    parts += ["## Inputs",
              _table(["file", "bytes", "sha256"],
                     [[i["path"], i["bytes"], f"`{i['sha256']}`"] for i in stats["inputs"]])]
    return "\n\n".join(parts) + "\n"


def write_data_card(path: Path, stats: dict[str, Any], profile: CountryProfile) -> None:
    path.write_text(render_data_card(stats, profile), encoding="utf-8")
