"""A user's terminal shows countrytune's own progress and summary, not the libraries': no
datasets or lm-eval progress bars, no DeepSpeed accelerator notice, no transformers deprecation
warnings. That output is kept in the run folder's library.log, and --verbose shows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.export_fixtures import SENTENCES

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "training.max_steps=2", "--set", "training.eval_every=0", "--set", "training.save_every=0",
        "--set", "training.log_every=1", "--set", "training.sequence_length=64",
        "--set", "tokenizer.train_vocab_size=400", "--set", "model.tiny.hidden_size=32",
        "--set", "model.tiny.intermediate_size=64", "--set", "data.eval_fraction=0.2"]
LIBRARY_NOISE = ("Generating test split", "it/s]", "examples/s]", "FutureWarning", "DeprecationWarning",
                 "Setting accelerator to CPU", "is deprecated")


def _train(tmp_path: Path, prep: Path, run: Path, *extra: str) -> str:
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES), encoding="utf-8")
    suite = tmp_path / "heldout.yaml"
    suite.write_text(json.dumps({"country": "id", "text": {"jav": [str(heldout)]}}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "TQDM_DISABLE")}
    env.update(COUNTRYTUNE_CACHE=str(tmp_path / "cache"), WANDB_MODE="offline",
               COUNTRYTUNE_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.run(
        [sys.executable, "-m", "countrytune", "train", "recipes/id/tiny-cpu.yaml", "--output", str(run),
         "--no-progress", "--set", f"data.sources=[{{path: {prep}}}]", *TINY,
         "--set", f"evaluation.suite={suite}", "--set", "evaluation.before_and_after=true", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_training_terminal_shows_only_countrytune_and_the_log_keeps_the_rest(sample_prep, tmp_path):
    run = tmp_path / "run"
    shown = _train(tmp_path, sample_prep, run)
    noise = [line for line in shown.splitlines() if any(n in line for n in LIBRARY_NOISE)]
    assert noise == [], "library output on the terminal:\n" + "\n".join(noise)
    assert "[countrytune train] adapter:" in shown and "bits_per_byte" in shown
    assert (run / "library.log").is_file()

    verbose = _train(tmp_path, sample_prep, tmp_path / "run-verbose", "--verbose")
    assert any(n in verbose for n in LIBRARY_NOISE), "--verbose shows the libraries' own output"


def test_library_records_go_to_the_folder_and_errors_still_show(tmp_path):
    """Records logged before the folder is known, after it, by a library that attaches its own
    terminal handler on import, and warnings.warn: all in library.log; errors also on stderr."""
    script = f"""
import logging, sys, warnings
from countrytune import library_output
library_output.quiet(verbose=False)
logging.getLogger("transformers.modeling_utils").warning("early transformers warning")
warnings.warn("`old_api` is deprecated", FutureWarning)
late = logging.getLogger("lm-eval")  # a library imported later, with its own terminal handler
late.addHandler(logging.StreamHandler(sys.stderr))
library_output.log_to({str(tmp_path)!r})
late.warning("lm-eval chatter")
late.error("lm-eval failed on a task")
print("countrytune's own line", file=sys.stderr)
"""
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    env["COUNTRYTUNE_STATE_DIR"] = str(tmp_path / "state")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    kept = (tmp_path / "library.log").read_text(encoding="utf-8")
    for line in ("early transformers warning", "is deprecated", "lm-eval chatter", "lm-eval failed"):
        assert line in kept
    assert proc.stderr.splitlines() == ["lm-eval: ERROR: lm-eval failed on a task", "countrytune's own line"]
