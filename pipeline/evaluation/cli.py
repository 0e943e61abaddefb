"""`countrytune eval`: the same yardstick for a base model and an adapter trained on it."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

EXAMPLE = """examples:
  countrytune eval --base models/smollm2-135m --suite recipes/id/heldout.yaml --output out/eval-base
  countrytune eval --adapter runs/id-smollm2-cpt --suite recipes/id/heldout.yaml --output out/eval
  countrytune eval --adapter pulled/id-cpt --text jav=my_heldout_jav.jsonl --output out/eval-jav
  countrytune eval --adapter runs/id-dpo --suite recipes/id/heldout-multitask.yaml \
      --base-scores out/eval-sft --output out/eval-dpo   # the base as scored for the SFT adapter

The base defaults to the one the run or package names. Each (task, language) is scored with
lm-evaluation-harness, offline; the tasks it ran are written under OUTPUT/tasks, so
`lm_eval --include_path OUTPUT/tasks --tasks ct_bits_per_byte_jav ...` reproduces a number.
A suite's translation tasks are written greedily and scored by corpus chrF++ per direction
(sacrebleu CHRF(word_order=2)), with `<task>_language`: the share of answers that prep's
language identifier puts in the language asked for.
"""


@dataclass(frozen=True)
class Target:
    base: str
    adapter: Path | None
    tokenizer: str
    description: str
    trained_model: Path | None = None
    """A whole trained model (a `method: full` run's RUN/model), scored against the base."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score base and adapter on held-out sets (bits-per-byte, tasks, translation)",
                       description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", help="base model directory or hub id (default: the one the adapter names)")
    p.add_argument("--adapter", type=Path,
                   help="a training run directory (LoRA or method: full), a pulled package or a peft "
                        "adapter directory")
    p.add_argument("--suite", type=Path, help="held-out suite YAML (e.g. recipes/id/heldout.yaml)")
    p.add_argument("--tasks", help="comma-separated tasks of the suite (default: all), e.g. bits_per_byte")
    p.add_argument("--languages", help="comma-separated language codes (default: all the suite has); a translation "
                        "direction (ind-jav) is kept by its own name or its target language")
    p.add_argument("--text", action="append", default=[], metavar="LANG=FILE",
                   help="add bits-per-byte on a held-out file of yours (JSONL, CSV, text, Parquet; "
                        "the 'text' field); repeatable")
    p.add_argument("--max-docs", type=int, help="score at most N records per set (a quick look)")
    p.add_argument("--base-scores", type=Path, metavar="EVAL_OUTPUT",
                   help="take the base's scores from an earlier eval's --output instead of scoring the "
                        "base again (several adapters against one base); refused unless that eval scored "
                        "the same base, dtype and batch size on the same records asked the same way")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 on GPU, fp32 on CPU")
    p.add_argument("--output", type=Path, required=True, help="folder for results.json, tasks, scores")
    p.set_defaults(run=run)


def resolve_target(base: str | None, adapter: Path | None) -> Target:
    """Which base, adapter and tokenizer to load, from a run dir, a package or a peft dir."""
    from countrytune.artifacts.manifest import MANIFEST_NAME, read_manifest
    from countrytune.artifacts.run_record import RUN_RECORD, read_run_record
    from countrytune.errors import UserError

    if adapter is None:
        if base is None:
            raise UserError("give --base, --adapter or both")
        return Target(base, None, base, f"base {base}")
    if not adapter.is_dir():
        raise UserError(f"--adapter {adapter}: no such directory")
    is_run = (adapter / RUN_RECORD).is_file()
    if is_run and (adapter / "model" / "config.json").is_file():  # a method: full run
        run = read_run_record(adapter)
        built = run.base_model.built_tiny
        base = base or (str(adapter / "base_model") if built else run.base_model.name_or_path)
        return Target(base, None, str(adapter / "model"), f"run {adapter} (all weights trained)",
                      trained_model=adapter / "model")
    if is_run and (adapter / "adapter").is_dir():  # a training run
        run = read_run_record(adapter)
        built = run.base_model.built_tiny
        default_base = str(adapter / "base_model") if built else run.base_model.name_or_path
        own_tok = run.tokenizer.differs_from_base or built
        base = base or default_base
        return Target(base, adapter / "adapter", str(adapter / "tokenizer") if own_tok else base,
                      f"run {adapter}")
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"--adapter {adapter}: neither a training run (run.json + adapter/) nor a "
                        f"peft adapter (adapter_config.json)")
    if (adapter / MANIFEST_NAME).is_file():  # a pulled package
        manifest = read_manifest(adapter)
        built = manifest.base_model.built_tiny
        base = base or (str(adapter / "base_model") if built else _pulled_base(adapter, manifest)
                        or manifest.base_model.name_or_path)
        own_tok = manifest.adapter.tokenizer_included
        return Target(base, adapter, str(adapter) if own_tok else base, f"package {adapter}")
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    base = base or config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter}/adapter_config.json names no base model; pass --base")
    own_tok = (adapter / "tokenizer_config.json").is_file()
    return Target(base, adapter, str(adapter) if own_tok else base, f"adapter {adapter}")


def _pulled_base(adapter: Path, manifest) -> str | None:
    """The base package `pull --with-base` put beside the adapter (DIR/base), when it is the one
    the adapter was trained on; the trainer's path means nothing on a deployment machine."""
    from pipeline.registry.bases import WITH_BASE_BASE, check_base_link

    folder = adapter.parent / WITH_BASE_BASE
    if manifest.base_model.package is None or not (folder / "config.json").is_file():
        return None
    return str(folder) if check_base_link(manifest, folder) is None else None


def _text_args(items: list[str]) -> dict[str, list[str]]:
    from countrytune.errors import UserError

    out: dict[str, list[str]] = {}
    for item in items:
        lang, sep, path = item.partition("=")
        if not sep or not lang or not path:
            raise UserError(f"--text {item!r}: expected LANG=FILE, e.g. jav=heldout_jav.jsonl")
        if not re.fullmatch(r"[a-z]{3}", lang):  # it names task files: never a path
            raise UserError(f"--text {item!r}: {lang!r} is not a language code; use the ISO 639-3 "
                            f"code, three lower-case letters (e.g. jav=heldout_jav.jsonl)")
        out.setdefault(lang, []).append(path)
    return out


def _check_output(out: Path) -> None:
    from countrytune.errors import UserError

    if out.exists() and any(out.iterdir()) and not (out / "tasks").is_dir():
        raise UserError(f"--output {out} exists and is not an earlier eval output; choose a new folder")


def run(args: argparse.Namespace) -> int:
    from countrytune import library_output
    from countrytune.atomic import atomic_dir
    from countrytune.errors import UserError
    from pipeline.scoring import heldout
    from countrytune.artifacts.results import RESULTS_NAME, print_table, write_results
    from pipeline.scoring.suite import load_suite

    def log(msg: str) -> None:
        print(f"[countrytune eval] {msg}", file=sys.stderr, flush=True)

    if args.suite is None and not args.text:
        raise UserError("nothing to score: give --suite (e.g. recipes/id/heldout.yaml) or --text LANG=FILE")
    target = resolve_target(args.base, args.adapter)
    _check_output(args.output)
    extra_text = _text_args(args.text)
    split = (lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None)
    # Written whole or not at all: a failed or interrupted eval leaves no tasks/ and heldout/
    # behind, and an earlier complete output stays as it was.
    with atomic_dir(args.output) as out:
        library_output.log_to(out)  # the open file moves with the folder when it lands
        sets = heldout.prepare(load_suite(args.suite) if args.suite else None, out,
                               tasks=split(args.tasks), languages=split(args.languages),
                               extra_text=extra_text, max_docs=args.max_docs, log=log)
        res = _score(target, args, sets, out, log)
        write_results(out, res)
        _point_tasks_at(out, args.output)
    print_table(res, f"held-out evaluation: {target.description}")
    log(f"wrote {args.output / RESULTS_NAME}")
    return 0


def _score(target: Target, args: argparse.Namespace, sets, out: Path, log):
    import torch

    from countrytune.hf_models import for_inference, load_tokenizer, load_weights
    from pipeline.scoring import heldout

    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if args.dtype == "bf16" or (args.dtype == "auto" and on_gpu) else torch.float32
    log(f"loading {target.base}")
    model = load_weights(target.base, dtype=dtype, attn="sdpa")
    if torch.cuda.is_available():
        model = model.to("cuda")
    tokenizer = load_tokenizer(target.tokenizer, None, None)
    fingerprint = heldout.base_fingerprint(sets, out, **_base_settings(target, dtype, args.batch_size))
    if args.base_scores is not None:
        base_scores = heldout.reuse_base_scores(args.base_scores, fingerprint, out)
        log(f"base scores of {len(base_scores)} sets taken from {args.base_scores}")
    else:
        base_scores = heldout.score(model, tokenizer, sets, out, "base", batch_size=args.batch_size, log=log)
    heldout.write_base_fingerprint(out, fingerprint)
    adapter_scores = None
    if target.adapter is not None:
        from peft import PeftModel

        log(f"loading adapter {target.adapter}")
        model = for_inference(PeftModel.from_pretrained(model, str(target.adapter)))
        adapter_scores = heldout.score(model, tokenizer, sets, out, "adapter",
                                       batch_size=args.batch_size, log=log)
    elif target.trained_model is not None:
        log(f"loading the trained model {target.trained_model}")
        del model
        trained = load_weights(str(target.trained_model), dtype=dtype, attn="sdpa")
        if torch.cuda.is_available():
            trained = trained.to("cuda")
        adapter_scores = heldout.score(trained, tokenizer, sets, out, "adapter",
                                       batch_size=args.batch_size, log=log)
    return heldout.results(sets, base_scores, adapter_scores)


def _base_settings(target: Target, dtype, batch_size: int) -> dict:
    """What the base's scores depend on besides the sets: the model (a local one by its weights'
    SHA-256, a hub id by name), its tokenizer, dtype, batch size (padding) and this version."""
    from countrytune import __version__
    from countrytune.hashing import sha256_file

    base = Path(target.base)
    weights = sorted(base.glob("*.safetensors")) if base.is_dir() else []
    return {"base": str(base.resolve()) if base.is_dir() else target.base,
            "base_weights_sha256": [sha256_file(w) for w in weights] or None,
            "tokenizer": str(Path(target.tokenizer).resolve()) if Path(target.tokenizer).is_dir() else target.tokenizer,
            "dtype": str(dtype), "batch_size": batch_size, "countrytune": __version__}


def _point_tasks_at(staging: Path, final: Path) -> None:
    """The task YAMLs name their data files by absolute path, written while the output was
    still being built under a temporary name: point them at where it lands."""
    for task in (staging / "tasks").glob("*.yaml"):
        text = task.read_text(encoding="utf-8")
        task.write_text(text.replace(str(staging.resolve()), str(final.resolve())), encoding="utf-8")
