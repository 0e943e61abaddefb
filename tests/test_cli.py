"""The command line: help for every subcommand, clear errors with exit code 2, a real run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from countrytune.cli import main
from tests.conftest import ROOT, SAMPLE_CORPUS


def test_help_is_instant_and_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "countrytune", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "prep" in out
    out = subprocess.run([sys.executable, "-m", "countrytune", "prep", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--country", "--input", "--output", "--stages", "--workers", "--config"):
        assert flag in out


@pytest.mark.parametrize("args, message", [
    (["prep", "--input", "x.jsonl", "--output", "o"], "no country"),
    (["prep", "--country", "zz", "--input", "x.jsonl", "--output", "o"], "no profile for country 'zz'"),
    (["prep", "--country", "id", "--output", "o"], "no input given"),
    (["prep", "--country", "id", "--input", "/nonexistent/*.jsonl", "--output", "o"], "matches no readable file"),
    (["prep", "--country", "id", "--input", "x", "--output", "o", "--stages", "pii,lint"], "unknown stage"),
    (["prep", "--config", "/nonexistent.yaml"], "no such file"),
])
def test_user_errors_exit_2_with_a_message(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_prep_from_recipe_with_flag_overrides(tmp_path, capsys):
    out = tmp_path / "prep"
    code = main(["prep", "--config", str(ROOT / "recipes" / "id" / "prep-sample.yaml"),
                 "--input", str(SAMPLE_CORPUS / "web-news.jsonl"), "--output", str(out),
                 "--workers", "1", "--no-progress", "--print-card"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "prep done:" in printed and "# Data card: Indonesia" in printed
    assert (out / "stats.json").exists() and list((out / "data").glob("*.parquet"))
