"""The package's README.md (model card) and the commands that serve or load it."""

from __future__ import annotations

import shlex
from pathlib import Path

from countrytune.artifacts.results import markdown_table
from pipeline.export.compat import VLLM_LORA_RANKS
from pipeline.registry.bases import WITH_BASE_ADAPTER, WITH_BASE_BASE
from countrytune.artifacts.manifest import MANIFEST_NAME, Manifest, parse_manifest

BASE_MODEL_SUBDIR = "base_model"
"""Where a package ships the base model when the run built a tiny one on the fly (demos)."""


def serving_rank(r: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that fits rank r."""
    return next((v for v in VLLM_LORA_RANKS if v >= r), VLLM_LORA_RANKS[-1])


def lora_module_name(manifest: Manifest) -> str:
    """The model name clients request (`"model": ...` in the OpenAI API)."""
    return f"{manifest.country}-{manifest.name}"


def base_model_arg(manifest: Manifest, package_dir: str, base_dir: str | None = None) -> str:
    """What `vllm serve` and from_pretrained load as the base: a pulled base package (`base_dir`),
    the tiny base shipped inside the package, or the name the run recorded."""
    if base_dir is not None:
        return base_dir
    if manifest.base_model.built_tiny:
        return f"{package_dir}/{BASE_MODEL_SUBDIR}"
    return manifest.base_model.name_or_path


def vllm_command(manifest: Manifest, package_dir: str, base_dir: str | None = None) -> str:
    """`vllm serve ...` for a package at `package_dir` (a path or a placeholder), on the base
    package pulled into `base_dir` when there is one."""
    q = shlex.quote
    if manifest.kind in ("merged", "base"):
        return f"vllm serve {q(package_dir)}"
    parts = ["vllm", "serve", q(base_model_arg(manifest, package_dir, base_dir))]
    if manifest.base_model.revision and not manifest.base_model.built_tiny and base_dir is None:
        parts += ["--revision", q(manifest.base_model.revision)]
    parts += ["--enable-lora", "--max-lora-rank", str(serving_rank(manifest.adapter.r)),
              "--lora-modules", q(f"{lora_module_name(manifest)}={package_dir}")]
    return " ".join(parts)


def vllm_serve_command(package_dir: Path | str, base_dir: Path | str | None = None) -> str:
    """The vLLM serve command for a pulled package (and its pulled base), read from its manifest."""
    path = Path(package_dir).resolve()
    manifest = parse_manifest((path / MANIFEST_NAME).read_bytes(), str(path))
    return vllm_command(manifest, str(path), None if base_dir is None else str(Path(base_dir).resolve()))


def _peft_snippet(m: Manifest, base_dir: str | None = None) -> str:
    base = repr(base_model_arg(m, "PACKAGE_DIR", base_dir))
    rev = (f", revision={m.base_model.revision!r}"
           if m.base_model.revision and not m.base_model.built_tiny and base_dir is None else "")
    if m.kind in ("merged", "base"):
        return ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                "model = AutoModelForCausalLM.from_pretrained('PACKAGE_DIR')\n"
                "tokenizer = AutoTokenizer.from_pretrained('PACKAGE_DIR')")
    tok_src = "'PACKAGE_DIR'" if m.adapter.tokenizer_included else base
    return ("from peft import PeftModel\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"base = AutoModelForCausalLM.from_pretrained({base}{rev})\n"
            "model = PeftModel.from_pretrained(base, 'PACKAGE_DIR')\n"
            f"tokenizer = AutoTokenizer.from_pretrained({tok_src})")


def _base_description(m: Manifest) -> str:
    if m.base_model.built_tiny:
        return f"a tiny random model built by the recipe (shipped in `{BASE_MODEL_SUBDIR}/`)"
    rev = f" (revision {m.base_model.revision})" if m.base_model.revision else ""
    name = m.base_model.model_name or m.base_model.name_or_path
    package = f", registry package `{m.base_model.package.ref}`" if m.base_model.package else ""
    return f"**{name}**{rev}{package}"


def training_summary(m: Manifest) -> str:
    if m.metrics is None:
        return "none (an imported base)"
    out = f"{m.metrics.steps:,} steps, {m.metrics.tokens:,} tokens"
    if m.metrics.train_loss is not None:
        out += f", last train loss {m.metrics.train_loss:.4f}"
    if m.metrics.wall_s is not None:
        out += f", {m.metrics.wall_s / 60:.1f} min"
    return out


def render_model_card(m: Manifest) -> str:
    """Markdown model card; `PACKAGE_DIR` stands for wherever `countrytune pull --to` put it."""
    if m.method is None:
        sections = [_imported_base_header, _base_origin, _serve, _load, _verify]
    else:
        sections = [_header, _base_origin, _data, _preference, _egress, _evaluation, _serve, _load, _limits,
                    _verify]
    return "\n".join(line for section in sections for line in section(m))


def _imported_base_header(m: Manifest) -> list[str]:
    return [f"# {m.country}/{m.name}:{m.version}", "",
            f"A base model, **{m.base_model.name_or_path}**, as imported by countrytune (not trained "
            f"here), pushed on {m.created}. Train LoRAs on it by naming it in a recipe "
            f"(`model.name_or_path: registry://{m.country}/{m.name}:{m.version}`), and serve their "
            f"adapters on this very package (`countrytune pull ADAPTER --with-base`).", "",
            f"- Architecture config SHA-256: `{m.base_model.config_sha256}`",
            f"- Weights: {', '.join(f'`{n}`' for n in sorted(m.base_model.weights_sha256))} "
            f"(SHA-256 in `{MANIFEST_NAME}`; adapters trained on this base record the same hashes)"]


def _header(m: Manifest) -> list[str]:
    what = {"lora": "a LoRA adapter (peft format)",
            "merged": "full model weights with the LoRA adapter merged in, for servers without LoRA",
            "base": ("a country base model: full weights with the adapter and any trained new-token "
                     "rows merged in, with its tokenizer; serve it as it is, or train LoRAs on it "
                     "(`model.name_or_path: PACKAGE_DIR` in a recipe)")}[m.kind]
    if m.method == "full":
        what = ("a country base model: every weight trained (full-parameter), with its tokenizer; "
                "serve it as it is, or train LoRAs on it (`model.name_or_path: PACKAGE_DIR` in a recipe)")
    task = (m.recipe or {}).get("task")
    training = {"sft": f"Instruction tuning of {_base_description(m)} on chats in the languages of **{m.country}**",
                "dpo": f"Preference tuning (DPO) of {_base_description(m)} on answers in the languages of "
                       f"**{m.country}**, ranked by a verifier",
                }.get(task, f"Continued pre-training of {_base_description(m)} on the local languages of "
                            f"**{m.country}**")
    return [
        f"# {m.country}/{m.name}:{m.version}", "",
        f"{training}: {what}. Made by countrytune on {m.created}.", "",
        f"- Languages: {', '.join(m.languages)}",
        (f"- LoRA: r={m.adapter.r}, alpha={m.adapter.lora_alpha:g}"
         f"{', rsLoRA' if m.adapter.use_rslora else ''}, on {', '.join(m.adapter.target_modules)}"
         if m.adapter is not None else "- Method: full-parameter training (every weight updated)"),
        f"- Training: {training_summary(m)}",
        f"- Recipe SHA-256: `{m.recipe_sha256}`; the whole recipe and data lineage are in `{MANIFEST_NAME}`",
    ]


def _is_sft(m: Manifest) -> bool:
    return m.recipe is not None and m.recipe.get("task") in ("sft", "dpo")


def _preference(m: Manifest) -> list[str]:
    """What was preferred and why: DPO's settings and, per pairs source, the verifier's tallies."""
    lines = []
    if m.initial_adapter is not None:
        lines += [f"Started from the adapter at `{m.initial_adapter.path}` (weights SHA-256 "
                  f"`{m.initial_adapter.weights_sha256}`).", ""]
    p = m.preference
    if p is None:
        return lines
    lines = ["## Preference tuning", "", *lines,
             f"DPO with beta {p.beta:g}" + (f", label smoothing {p.label_smoothing:g}" if p.label_smoothing else "")
             + (f", plus {p.chosen_nll:g} x the chosen answer's negative log-likelihood per token"
                if p.chosen_nll else "")
             + f"; the reference is the {p.reference}.", ""]
    for made in p.pairs:
        lines += [f"Pairs from `{made.get('source')}`: {made.get('samples_per_prompt')} answers sampled per "
                  f"prompt from `{made.get('adapter', {}).get('path')}`, ranked by: "
                  f"{'; then '.join(made.get('verifier', []))}.", ""]
        if contrasts := made.get("contrast_pairs", {}).get("written"):
            lines += [f"{contrasts:,} of the pairs are contrast pairs: a translation's reference against the same "
                      f"sentence in another language, from the parallel data.", ""]
        lines += ["| why chosen | pairs |", "|---|---:|"]
        lines += [f"| {why} | {n:,} |" for why, n in sorted(made.get("chosen_because", {}).items())]
        lines += ["", "| why rejected | pairs |", "|---|---:|"]
        lines += [f"| {why} | {n:,} |" for why, n in sorted(made.get("rejected_because", {}).items())]
        lines.append("")
    return lines


def _base_origin(m: Manifest) -> list[str]:
    lines, b = [], m.base_model
    if b.licence:
        where = f" (text in `{b.licence_file}`)" if b.licence_file else ""
        whose = "This model's" if m.method is None else "Base model"
        lines.append(f"- {whose} licence: **{b.licence}**{where}; its terms apply to this package too")
    if b.imported_from:
        what = "Imported" if m.method is None else "Base imported"
        lines.append(f"- {what} from {b.imported_from} (GGUF SHA-256 `{b.gguf_sha256}`), "
                     f"dequantised: a real but slightly degraded copy of the original weights")
    if b.package is not None and m.method is not None:
        lines.append(f"- Base package: `{b.package.ref}` (manifest SHA-256 `{b.package.manifest_sha256}`"
                     f"{', from ' + b.package.registry if b.package.registry else ''}); "
                     f"`countrytune pull {m.country}/{m.name}:{m.version} --with-base` fetches it too")
    if b.built_tiny:
        lines.append(f"- The base model is a tiny random model built by the recipe; it ships in "
                     f"`{BASE_MODEL_SUBDIR}/` (a demo, not a useful model)")
    return lines


def _data(m: Manifest) -> list[str]:
    lines = ["", "## Data", ""]
    for d in m.data:
        if d.prep is None:
            lines += [(f"From `{d.source}` ({len(d.shards)} shards; not a countrytune prep output, "
                      f"so no cleaning record)."), ""]
            continue
        p, t = d.prep, d.prep.totals
        lines.append(f"From `{d.source}` (prepared {p.prepared}, profile {p.profile}): "
                     f"{t.get('records_in', 0):,} records in, {t.get('docs_out', 0):,} documents kept, "
                     f"{t.get('rejected', 0):,} rejected; {len(p.inputs)} input files, "
                     f"{len(d.shards)} clean shards used.")
        kinds = {k: v for k, v in p.pii_redacted.items() if k != "docs_with_pii"}
        if kinds:
            pii = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
            docs = p.pii_redacted.get("docs_with_pii")
            lines.append(f"Personal data redacted before training{f' in {docs:,} documents' if docs else ''}: "
                         f"{pii}.")
        lines += ["", "| language | docs in | kept | chars kept |", "|---|---|---|---|"]
        lines += [f"| {lang} | {c.docs_in:,} | {c.docs_out:,} | {c.chars_out:,} |"
                  for lang, c in p.languages.items() if c.docs_out]
        lines.append("")
    if m.data_mixture:
        lines += ["What training drew from each language (shares of the documents drawn; passes "
                  "above 1 mean its documents were repeated):", "",
                  "| language | documents | share | passes |", "|---|---:|---:|---:|"]
        lines += [f"| {lang} | {mix.docs:,} | {mix.share:.1%} | {mix.passes:.2f} |"
                  for lang, mix in sorted(m.data_mixture.items())]
        lines.append("")
    return lines


def _egress(m: Manifest) -> list[str]:
    lines = ["## What left the machine", ""]
    lines += [f"- {line}" for line in m.egress] or ["- Not recorded (a package made before countrytune recorded it)."]
    return lines + ["", ("Anything not listed stayed on the machines that ran the job (recorded by prep in "
                         "stats.json, by the trainer in run.json, and by export)."), ""]


def _evaluation(m: Manifest) -> list[str]:
    lines = ["## Evaluation", ""]
    if m.heldout_eval is not None:
        after = "adapter" if m.method == "lora" else "the trained model"
        lines += [("Held-out sets scored with lm-evaluation-harness before training (base) and after "
                   f"({after}), on the same documents, per language. bits_per_byte: lower is better, "
                   "comparable across tokenizers; acc (multiple choice), exact_match (the answer the "
                   "model writes) and macro_f1 (over the labels): higher is better. The stderr is that "
                   "of the difference, paired over documents."), "", markdown_table(m.heldout_eval), ""]
    if m.eval and any(e.pairs is not None for e in m.eval.values()):
        lines += ["Held-out preference pairs per language at the end of training: the DPO loss (lower is "
                  "better) and the share of pairs whose implicit reward prefers the chosen answer.", "",
                  "| language | DPO loss | chosen preferred | pairs |", "|---|---|---|---|"]
        return lines + [f"| {lang} | {e.loss:.4f} | {e.reward_accuracy:.1%} | {e.pairs:,} |"
                        for lang, e in sorted(m.eval.items())]
    lines += ["Held-out loss and perplexity per language during training (lower is better).", ""]
    if m.eval:
        lines += ["| language | loss | perplexity | tokens |", "|---|---|---|---|"]
        lines += [f"| {lang} | {e.loss:.4f} | {e.perplexity:.2f} | {e.tokens:,} |"
                  for lang, e in sorted(m.eval.items())]
    else:
        lines.append("The run recorded no evaluation.")
    return lines


def _serve(m: Manifest) -> list[str]:
    ref = f"{m.country}/{m.name}:{m.version}"
    lines = ["", "## Serve with vLLM", "", "```bash"]
    if m.kind == "lora" and m.base_model.package is not None:
        lines += [f"countrytune pull {ref} --registry REGISTRY --to DIR --with-base",
                  vllm_command(m, f"DIR/{WITH_BASE_ADAPTER}", f"DIR/{WITH_BASE_BASE}")]
    else:
        lines += [f"countrytune pull {ref} --registry REGISTRY --to PACKAGE_DIR", vllm_command(m, "PACKAGE_DIR")]
    lines += ["```", ""]
    if m.kind == "lora":
        lines += [f"Then request `\"model\": \"{lora_module_name(m)}\"`.", ""]
        c = m.compatibility
        if not c.vllm_multi_lora:
            lines += ["**Exported despite vLLM incompatibilities** (`--allow-incompatible`):", ""]
            lines += [f"- {p}" for p in c.problems] + [""]
        lines += [f"- {w}" for w in c.warnings] + ([""] if c.warnings else [])
    return lines


def _load(m: Manifest) -> list[str]:
    with_base = m.kind == "lora" and m.base_model.package is not None
    snippet = _peft_snippet(m, "BASE_DIR" if with_base else None)
    note = ([f"(`BASE_DIR`: the base package, `DIR/{WITH_BASE_BASE}` after `pull --with-base`)", ""]
            if with_base else [])
    return ["## Load with transformers / peft", "", "```python", snippet, "```", "", *note]


def _limits(m: Manifest) -> list[str]:
    return ["## Limits", "",
            ("- Preference-tuned on the tasks of its pairs only, towards what the verifier above checks "
             "(the language asked for, the right label, closeness to a reference translation), not for "
             "safety or helpfulness at large; evaluate on your task before use."
             if (m.recipe or {}).get("task") == "dpo" else
             "- Instruction-tuned on the tasks of its training chats only (see Data), not for "
             "safety and with no preference tuning; evaluate on your task before use." if _is_sft(m) else
             "- Trained for language modelling of the listed languages, not instruction following "
             "or safety; evaluate on your task before use."),
            ("- Training text was filtered and redacted automatically; some personal data or "
             "offensive text may remain."),
            ("- Perplexities compare checkpoints on the same held-out text; they are not "
             "comparable across tokenizers or with other models' published numbers."),
            f"- Use it only with the base model named above{' at that revision' if m.base_model.revision else ''}.",
            ""]


def _verify(m: Manifest) -> list[str]:
    return ["## Verify", "",
            (f"`countrytune pull` checks the SHA-256 and size of every file against `{MANIFEST_NAME}` "
             "and refuses a package that does not match."), ""]
