"""transformers' Hub kernels are never used: every model the project loads or builds has
`use_kernels` off, whatever the environment says (countrytune/hf_models.py says why).

tests/conftest.py also fails any test in which project code loads a model with them on; this file
shows that guard can fail, and that no loading call bypasses countrytune.hf_models."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SOURCE_DIRS = ("countrytune", "pipeline", "data_prep", "launch", "bench")
LOADERS = {"from_pretrained", "from_config", "from_single_file"}


def _model_loads_outside_the_helper() -> list[str]:
    """`X.from_pretrained(...)` / `X.from_config(...)` calls on anything that is not a tokenizer,
    config or peft wrapper, in project code other than countrytune/hf_models.py."""
    found = []
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "countrytune" / "hf_models.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in LOADERS):
                    continue
                owner = ast.unparse(node.func.value)
                if any(word in owner for word in ("Tokenizer", "Config", "PeftModel", "tok")):
                    continue
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {owner}.{node.func.attr}")
    return found


def test_no_project_code_loads_a_model_around_the_helper():
    assert _model_loads_outside_the_helper() == []


def test_the_scan_sees_a_load_that_bypasses_the_helper(tmp_path, monkeypatch):
    # Negative control: the same scan over a file that loads a model directly reports it.
    import tests.test_no_hub_kernels as me

    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "bad.py").write_text(
        "from transformers import AutoModelForCausalLM\nm = AutoModelForCausalLM.from_pretrained('x')\n"
        "t = AutoTokenizer.from_pretrained('x')\n")
    monkeypatch.setattr(me, "ROOT", tmp_path)
    monkeypatch.setattr(me, "SOURCE_DIRS", ("pipeline",))
    assert me._model_loads_outside_the_helper() == ["pipeline/bad.py:2: AutoModelForCausalLM.from_pretrained"]


@pytest.fixture
def tiny_model_dir(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, vocab_size=100)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_a_stock_load_turns_hub_kernels_on_and_ours_does_not(tiny_model_dir):
    # The variable is YES (conftest): a stock load, as transformers >= 5.24 does it by default,
    # comes back kernelized; that is what the GPU run crashed on. Ours comes back without.
    from transformers import AutoModelForCausalLM

    from countrytune.hf_models import load_causal_lm
    from pipeline.training.model import load_base_model
    from countrytune.artifacts.recipe import ModelSpec

    assert os.environ["USE_HUB_KERNELS"] == "YES"
    assert AutoModelForCausalLM.from_pretrained(tiny_model_dir).use_kernels is True
    assert load_causal_lm(tiny_model_dir).use_kernels is False
    import torch

    trained = load_base_model(str(tiny_model_dir), ModelSpec(name_or_path=str(tiny_model_dir)),
                              dtype=torch.float32, attn="sdpa")
    assert trained.use_kernels is False
    trained.train()  # where kernelize ran on the GPU
    assert trained.use_kernels is False


def test_the_guard_fails_a_load_made_by_project_code(tiny_model_dir):
    # The conftest guard raises when project code loads with kernels on; run a load from a
    # frame in the project's tree to see it fire.
    code = compile("from transformers import AutoModelForCausalLM\n"
                   "AutoModelForCausalLM.from_pretrained(PATH)\n",
                   str(ROOT / "pipeline" / "imagined_loader.py"), "exec")
    with pytest.raises(AssertionError, match="Hub kernels on by project code.*imagined_loader"):
        exec(code, {"PATH": tiny_model_dir})


def test_entry_points_turn_hub_kernels_off_for_the_whole_process():
    # A library loading a model by itself (not through the helper) is covered by the variable
    # every entry point sets, also over a user's USE_HUB_KERNELS=YES.
    code = ("import os\nfrom countrytune.errors import run_command\n"
            "class A: command = 'x'\n"
            "run_command(lambda a: print(os.environ['USE_HUB_KERNELS']), A())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "USE_HUB_KERNELS": "YES"}, check=True)
    assert out.stdout.strip() == "NO"
