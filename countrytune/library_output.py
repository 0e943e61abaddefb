"""Third-party chatter kept off the user's terminal, and kept: progress bars of datasets and
lm-eval, deprecation warnings, DeepSpeed's and transformers' log lines go to `library.log` in
the folder the command writes (the run folder, the eval or prep output); with `--verbose` they
show as the libraries print them. Errors a library logs still reach the terminal.

Libraries attach their own terminal handlers when first imported (transformers, lm-eval,
DeepSpeed), so `route()` moves them again after each stage has imported what it uses; what is
logged before a command knows its folder waits in memory, and what no folder took by the end
goes to `$COUNTRYTUNE_STATE_DIR/library.log` (default ~/.local/state/countrytune): never dropped.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from logging.handlers import MemoryHandler
from pathlib import Path

LOG_NAME = "library.log"
# Top-level logger names of the libraries the stages run on.
LIBRARIES = ("transformers", "datasets", "lm-eval", "lm_eval", "accelerate", "peft", "DeepSpeed",
             "deepspeed", "torch", "huggingface_hub", "gguf", "evaluate", "filelock", "urllib3",
             "py.warnings", "ray", "numexpr", "sqlitedict", "absl")
PROGRESS_OFF = {"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# sink: where library records go now (a buffer until the command names its folder, then the
# file); errors: the stderr handler for a library's errors.
_state: dict = {"quiet": False, "buffer": None, "file": None, "sink": None, "errors": None}


def quiet(verbose: bool) -> None:
    """For the whole process (and the processes it starts): library output off the terminal
    unless `verbose`."""
    if verbose or _state["quiet"]:
        return
    _state["quiet"] = True
    os.environ.update(PROGRESS_OFF)
    # DeepSpeed warns "Setting accelerator to CPU" on every import where no accelerator is
    # found; told CPU up front it says it at info level (countrytune trains on CUDA or CPU).
    if "DS_ACCELERATOR" not in os.environ and not Path("/dev/nvidiactl").exists():
        os.environ["DS_ACCELERATOR"] = "cpu"
    logging.captureWarnings(True)  # FutureWarning and friends become py.warnings log records
    buffer = MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1, flushOnClose=False)
    buffer.setFormatter(logging.Formatter(FORMAT))
    _state["buffer"] = _state["sink"] = buffer
    atexit.register(_flush_leftovers)
    route()


def log_to(folder: Path) -> Path | None:
    """The command's folder is known: library output goes to FOLDER/library.log from now on,
    with what was logged before. None when output is not being kept off the terminal."""
    if not _state["quiet"]:
        return None
    path = Path(folder) / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    old, _state["file"], _state["sink"] = _state["file"], handler, handler
    buffer = _state["buffer"]
    buffer.setTarget(handler)
    buffer.flush()  # what was logged before the folder was known
    route()
    if old is not None:
        old.close()
    return path


def route() -> None:
    """Move every library logger that exists now off the terminal: records to the sink (the
    buffer, or the file once the folder is known), errors still to stderr."""
    if not _state["quiet"]:
        return
    errors = _stderr_errors()
    for name in [*LIBRARIES, *logging.Logger.manager.loggerDict]:
        if name not in LIBRARIES and name.split(".")[0] not in LIBRARIES:
            continue
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if handler is not _state["sink"] and handler is not errors:
                logger.removeHandler(handler)
        if name in LIBRARIES or not logger.propagate:  # a library's own root, or one cut loose
            for handler in (_state["sink"], errors):
                if handler not in logger.handlers:
                    logger.addHandler(handler)
            logger.propagate = False


def _stderr_errors() -> logging.Handler:
    handler = _state.get("errors")
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.ERROR)
        handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
        _state["errors"] = handler
    return handler


def _flush_leftovers() -> None:
    buffer = _state["buffer"]
    if buffer is None or not buffer.buffer:
        return
    if _state["file"] is None:  # no folder took them: the state folder does
        root = os.environ.get("COUNTRYTUNE_STATE_DIR") or str(
            Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "countrytune")
        try:
            log_to(Path(root))
        except OSError:
            return  # at exit, with nowhere writable: the terminal was never promised these
