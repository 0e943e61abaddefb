"""Held-out evaluation inside training: the base before step 1, the adapter at the end, the
same numbers as `countrytune eval` on the saved files, and the table in the exported package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from countrytune_cli import main
from countrytune.errors import UserError
from tests.export_fixtures import SENTENCES
from tests.test_train import _recipe

ROOT = Path(__file__).resolve().parents[1]


def _suite(tmp_path: Path, text_file: Path) -> Path:
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"text": s, "label": "pos" if i % 2 else "neg"}) + "\n"
                                for i, s in enumerate(SENTENCES)), encoding="utf-8")
    suite = {"country": "id", "text": {"jav": [str(text_file)], "ind": [str(text_file)]},
             "classification": {"sentiment": {"files": {"jav": [str(labelled)]},
                                              "prompt": "{{text}} Sentiment:",
                                              "choices": {"neg": "negative", "pos": "positive"}}}}
    path = tmp_path / "heldout.yaml"
    path.write_text(json.dumps(suite), encoding="utf-8")
    return path


def test_training_scores_base_and_adapter_and_export_carries_the_table(sample_prep, train_env, capsys):
    from pipeline.export.package import export_run
    from pipeline.registry import open_registry
    from pipeline.registry.refs import parse_ref
    from pipeline.train import train

    heldout = train_env / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES), encoding="utf-8")
    suite = _suite(train_env, heldout)
    run = train_env / "run"
    train(_recipe(sample_prep, "training.max_steps=6", f"evaluation.suite={suite}",
                  "evaluation.before_and_after=true"), run, progress=False)

    record = json.loads((run / "run.json").read_text())
    table = record["heldout_eval"]
    assert set(table) == {"bits_per_byte", "sentiment"} and set(table["bits_per_byte"]) == {"ind", "jav"}
    jav = table["bits_per_byte"]["jav"]
    assert jav["docs"] == len(SENTENCES) and jav["adapter"] < jav["base"], "training lowered bpb"
    assert jav["diff"] == pytest.approx(jav["adapter"] - jav["base"])
    # The training mix: shares sum to one; each language's passes are its draws per pass of the
    # order over its documents, times the same number of passes over the order for all.
    mix = record["data_mixture"]
    assert sum(m["share"] for m in mix.values()) == pytest.approx(1, abs=1e-5)
    assert sum(m["docs"] for m in mix.values()) == record["data_docs"]["train"]
    total = record["data_docs"]["train"]
    over_order = {round(m["passes"] / (max(1, round(m["share"] * total)) / m["docs"]), 3) for m in mix.values()}
    assert len(over_order) == 1 and 0 < over_order.pop()

    # `countrytune eval` on the saved run gives the same numbers as the trainer did in memory.
    out = train_env / "eval"
    assert main(["eval", "--adapter", str(run), "--suite", str(suite), "--output", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())
    for task, langs in table.items():
        for lang, row in langs.items():
            assert again[task][lang]["base"] == pytest.approx(row["base"], rel=1e-5)
            assert again[task][lang]["adapter"] == pytest.approx(row["adapter"], rel=1e-5)
    assert "bits_per_byte" in capsys.readouterr().out  # the printed table

    registry = train_env / "registry"
    ref = export_run(run, str(registry), "1.0", log=lambda m: None)
    reg = open_registry(str(registry))
    manifest = json.loads(reg.read_manifest(reg.resolve(parse_ref(ref))))
    assert manifest["heldout_eval"] == table and manifest["data_mixture"] == mix
    pkg = train_env / "pulled"
    assert main(["pull", ref, "--registry", str(registry), "--to", str(pkg)]) == 0
    card = (pkg / "README.md").read_text()
    assert "| bits_per_byte | jav | bits_per_byte |" in card
    assert "| language | documents | share | passes |" in card and f"| jav | {mix['jav']['docs']:,} |" in card


def test_a_file_used_for_training_cannot_be_held_out(sample_prep, train_env):
    from pipeline.train import train

    stats = json.loads((sample_prep / "stats.json").read_text())
    trained_on = stats["inputs"][0]["path"]
    suite = _suite(train_env, Path(trained_on))
    with pytest.raises(UserError, match="never serves both training and evaluation"):
        train(_recipe(sample_prep, f"evaluation.suite={suite}", "evaluation.before_and_after=true"),
              train_env / "run", progress=False)
