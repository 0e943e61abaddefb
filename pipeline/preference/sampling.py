"""Answers sampled from a trained adapter: what on-policy preference pairs are made of."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from countrytune.errors import UserError


@dataclass(frozen=True)
class Policy:
    """A finished training run's model: its base with its adapter, and its tokenizer."""

    run: Path
    base: str
    adapter: Path
    tokenizer: str


def policy_of_run(run: Path) -> Policy:
    """The base, adapter and tokenizer a finished LoRA training run trained and wrote."""
    from countrytune.artifacts.run_record import RUN_RECORD, read_run_record

    if not (run / RUN_RECORD).is_file() or not (run / "adapter" / "adapter_config.json").is_file():
        raise UserError(f"--adapter {run}: not a finished LoRA training run (run.json and adapter/); "
                        f"give the SFT run's folder (countrytune train ... --output RUN)")
    record = read_run_record(run)
    base = str(run / "base_model") if record.base_model.built_tiny else record.base_model.name_or_path
    return Policy(run, base, run / "adapter", str(run / "tokenizer"))


@dataclass(frozen=True)
class Sample:
    text: str
    finished: bool
    """It ended its turn (a stop token) within max_new_tokens; False: cut off."""


class Sampler:
    """K answers per prompt, sampled with the run's chat template, batch by batch, seeded by
    the batch's position so the same command writes the same answers."""

    def __init__(self, policy: Policy, *, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int) -> None:
        from peft import PeftModel

        from countrytune.hf_models import for_inference, load_tokenizer, load_weights

        self.tokenizer = load_tokenizer(policy.tokenizer, None, None)
        self.tokenizer.padding_side = "left"  # generation continues each prompt's last token
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        model = load_weights(policy.base, dtype=dtype, attn="sdpa")
        model.config.use_cache = True  # generation, unlike training, wants the KV cache
        self.model = for_inference(PeftModel.from_pretrained(model, str(policy.adapter)))
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.temperature, self.top_p, self.max_new_tokens, self.seed = temperature, top_p, max_new_tokens, seed
        end_of_turn = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        ends = {self.tokenizer.eos_token_id}
        if isinstance(end_of_turn, int) and end_of_turn != self.tokenizer.unk_token_id:
            ends.add(end_of_turn)
        self.stop_ids = sorted(i for i in ends if i is not None)

    def sample(self, prompts: list[list[dict[str, str]]], k: int, batch_index: int) -> list[list[Sample]]:
        """k answers for each prompt (a chat ending with the user's turn)."""
        texts = [self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        enc = self.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(self.model.device)
        torch.manual_seed(self.seed * 1_000_003 + batch_index)
        with torch.no_grad():
            out = self.model.generate(**enc, do_sample=True, temperature=self.temperature, top_p=self.top_p,
                                      max_new_tokens=self.max_new_tokens, num_return_sequences=k,
                                      eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id)
        written = out[:, enc["input_ids"].shape[1]:]
        # Decoded text looks the same whether the model ended its turn or ran out of tokens.
        ended = torch.isin(written, torch.tensor(self.stop_ids, device=written.device)).any(dim=1).tolist()
        texts = self.tokenizer.batch_decode(written, skip_special_tokens=True)
        answers = [Sample(t.strip(), e) for t, e in zip(texts, ended)]
        return [answers[i * k:(i + 1) * k] for i in range(len(prompts))]
