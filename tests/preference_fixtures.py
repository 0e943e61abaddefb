"""Builders for the preference-tuning tests: parallel sentences written for them, and a
preference-pairs output written by hand (the translation is chosen, the untranslated source
rejected as the wrong language), for runs that need pairs without an SFT adapter to sample."""

from __future__ import annotations

from pathlib import Path

# Parallel sentences written for these tests (Indonesian, Javanese).
IND = ["Saya pergi ke pasar pagi ini.", "Ibu memasak nasi goreng di dapur.", "Adik saya suka membaca buku cerita.",
       "Hujan turun deras sejak tadi malam.", "Kami makan bersama di rumah nenek.", "Bapak bekerja di sawah setiap hari.",
       "Anak-anak bermain bola di lapangan.", "Toko itu tutup pada hari Minggu.", "Saya tidak punya uang hari ini.",
       "Teman saya datang dari Surabaya kemarin."]
JAV = ["Aku lunga menyang pasar esuk iki.", "Ibu masak sega goreng ing pawon.", "Adhiku seneng maca buku crita.",
       "Udan deres wiwit mau bengi.", "Awake dhewe mangan bareng ing omahe mbah.", "Bapak nyambut gawe ing sawah saben dina.",
       "Bocah-bocah padha main bal ing lapangan.", "Toko kuwi tutup dina Minggu.", "Aku ora duwe dhuwit dina iki.",
       "Kancaku teka saka Surabaya wingi."]


def hand_written_pairs(out: Path) -> Path:
    """Both directions of every sentence pair as a preference pair, in a folder shaped as
    `countrytune preference-pairs` writes it (its stats.json has no `preference` block: no
    adapter sampled these answers)."""
    from countrytune.artifacts.preference import KIND, pair_line
    from countrytune.artifacts.prep_output import PrepStats, write_stats
    from countrytune.hashing import sha256_file
    from countrytune.schema import validate

    (out / "data").mkdir(parents=True)
    lines = []
    for i, (ind, jav) in enumerate(zip(IND, JAV)):
        for source, target, src_lang, lang, name in ((ind, jav, "ind", "jav", "Javanese"),
                                                     (jav, ind, "jav", "ind", "Indonesian")):
            judged = {"origin": "sample", "score": 0.0}
            lines.append(pair_line({
                "id": f"pair:translation:{src_lang}>{lang}:{i}", "lang": lang, "task": "translation",
                "prompt": [{"role": "user", "content": f"Translate into {name}.\n\n{source}"}],
                "chosen": target, "rejected": source,
                "chosen_judgement": {**judged, "origin": "reference", "language": lang, "language_ok": True,
                                     "score": 100.0, "why": f"{lang} as asked (the reference)"},
                "rejected_judgement": {**judged, "language": src_lang, "language_ok": False,
                                       "why": f"{src_lang}, asked {lang}"},
                "template": "en", "source": f"translation:{src_lang}>{lang}:{i}"}))
    data = out / "data" / "train-00000.jsonl"
    data.write_text("".join(lines), encoding="utf-8")
    per_lang = {lang: {"docs_in": len(IND), "docs_out": len(IND), "rejected": 0} for lang in ("ind", "jav")}
    write_stats(out, validate(PrepStats, {
        "kind": KIND, "name": "hand-written", "country": "id", "profile": "id", "created": "2026-01-01T00:00:00+00:00",
        "inputs": [{"path": str(data), "sha256": sha256_file(data), "bytes": data.stat().st_size}],
        "totals": {"records_in": len(lines), "docs_out": len(lines), "rejected": 0},
        "languages": per_lang, "config": {}}, "hand-written pairs"))
    return out
