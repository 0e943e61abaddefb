"""The command line: help for every subcommand, clear errors with exit code 2, a real run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from countrytune_cli import main
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


def test_imports_run_from_the_cli_down_to_the_foundation():
    """No stage imports the CLI back, and launch validates recipes without the training stack
    (ARCHITECTURE.md)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import launch.common\n"
            "launch.common.resolve_recipe_file('recipes/id/cpt-lora.yaml')\n"
            "assert 'torch' not in sys.modules, 'launch pulled in torch'\n"
            "import data_prep.runner, data_prep.instructions, pipeline.train, pipeline.export.package, pipeline.evaluation.cli\n"
            "import pipeline.model_import.cli, launch.cli\n"
            "assert 'countrytune_cli' not in sys.modules, 'a stage imports the CLI'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
