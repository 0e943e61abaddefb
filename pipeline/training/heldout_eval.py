"""Held-out evaluation inside `countrytune train`: the base before step 1, the trained model
(adapter, or whole model for method: full) at the end.

For a LoRA run the base is the peft model with its adapter switched off (`disable_adapter`),
which is the base model exactly, so nothing is loaded twice and a resumed run can still score
the base. For a full run it is the model before step 1, or the base loaded again when an
earlier attempt's base scores are gone (pipeline/training/trained_weights.py).
Scoring runs on the main process; the others wait at a barrier. Under ZeRO-3 every process
holds only a slice of each weight, so a forward on one process cannot run: the trainer says
so and `countrytune eval --adapter RUN` scores the saved run instead.

Files go to RUN/heldout_eval/ (the layout `countrytune eval` writes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from countrytune.artifacts.prep_output import is_prep_output, open_prep_output
from countrytune.errors import UserError
from countrytune.hashing import sha256_file
from pipeline.scoring import heldout
from countrytune.artifacts.results import HeldoutResults, markdown_table, write_results
from pipeline.scoring.suite import EvalSuite, TaskSet, load_suite
from countrytune.artifacts.recipe import TrainRecipe

EVAL_DIR = "heldout_eval"


def check_not_trained_on(suite: EvalSuite, suite_path: str, recipe: TrainRecipe) -> None:
    """Refuse training data made from a file the suite scores (a file never serves both).

    A prep output lists its inputs' SHA-256 in stats.json; other sources are compared file by
    file, hashing only files of a held-out file's size (a big corpus is not read for this)."""
    from pipeline.training.data import source_files

    held_out = {sha256_file(p): p for p in suite.files() if p.is_file()}
    sizes = {p.stat().st_size for p in held_out.values()}
    for source in recipe.data.sources:
        if is_prep_output(source.path):
            inputs = open_prep_output(source.path, f"data source {source.path}").stats.inputs
            used = [(i.path, i.sha256) for i in inputs]
        else:
            used = [(str(p), sha256_file(p)) for p in source_files(source) if p.stat().st_size in sizes]
        for path, digest in used:
            if digest in held_out:
                raise UserError(
                    f"training data {source.path} holds {path}, which the held-out suite {suite_path} "
                    f"also scores ({held_out[digest]}); a file never serves both training and "
                    f"evaluation: take it out of the prep inputs or out of the suite")


class TrainingEval:
    """The trainer's held-out evaluation; a no-op when the recipe turns it off."""

    def __init__(self, recipe: TrainRecipe, run_dir: Path, say: Callable[[str], None]) -> None:
        spec = recipe.evaluation
        self.spec, self.say = spec, say
        self.active = spec.active(tiny_base=recipe.model.tiny is not None)
        self.out = run_dir / EVAL_DIR
        self.sets: list[TaskSet] = []
        self.suite = load_suite(spec.suite) if self.active else None
        if self.suite is not None:
            check_not_trained_on(self.suite, spec.suite, recipe)

    def _runnable(self, zero3: bool) -> bool:
        if not self.active:
            return False
        if zero3:
            self.say("held-out evaluation skipped: under ZeRO-3 no single process holds whole weights; "
                     "score the finished run with `countrytune eval --adapter RUN_DIR --suite ...`")
            self.active = False
        return self.active

    def _prepare(self) -> None:
        if not self.sets:
            self.sets = heldout.prepare(self.suite, self.out, tasks=self.spec.tasks,
                                        languages=self.spec.languages,
                                        max_docs=self.spec.max_docs_per_language, log=self.say)

    def before(self, weights, tokenizer, accelerator, zero3: bool, untouched: bool) -> None:
        """Score the base unless an earlier attempt of this run already did. untouched: no
        step has changed the weights yet."""
        if not self._runnable(zero3):
            return
        if accelerator.is_main_process:
            self._prepare()
            if heldout.load_scores(self.out, "base") is None:
                with weights.base_for_scoring(untouched) as base:
                    heldout.score(base, tokenizer, self.sets, self.out, "base",
                                  batch_size=self.spec.batch_size, log=self.say)
        accelerator.wait_for_everyone()

    def after(self, weights, tokenizer, accelerator, zero3: bool) -> HeldoutResults | None:
        """Score the trained model and compare it with the base; main process returns it."""
        if not self._runnable(zero3):
            return None
        res = None
        if accelerator.is_main_process:
            self._prepare()
            base = heldout.load_scores(self.out, "base")
            if base is None:  # the base scores were lost
                with weights.base_for_scoring(untouched=False) as base_model:
                    base = heldout.score(base_model, tokenizer, self.sets, self.out, "base",
                                         batch_size=self.spec.batch_size, log=self.say)
            adapter = heldout.score(weights.module, tokenizer, self.sets, self.out, "adapter",
                                    batch_size=self.spec.batch_size, log=self.say)
            res = heldout.results(self.sets, base, adapter)
            write_results(self.out, res)
            for line in markdown_table(res).splitlines():
                self.say(line)
        accelerator.wait_for_everyone()
        return res
