"""`accelerate launch -m pipeline.train RECIPE`: the training entry point that launch templates
and users type. A launcher only: the loop lives in pipeline/training/loop.py."""

import logging
import os
import sys

from pipeline.training.loop import TrainOutcome, main, train

__all__ = ["TrainOutcome", "main", "train"]


def exit_launched_process(code: int) -> None:
    """Leave a finished rank of a multi-process run without interpreter teardown.

    DeepSpeed keeps its process groups in module globals and on every parameter, so destroying
    the process group does not free them: gloo's worker threads lived on until the interpreter
    tore the modules down, and now and then a rank died there in std::terminate (exit -6) after
    a complete, saved run, which failed the launcher. By the time a run returns 0 everything
    it writes is written and closed (weights, run.json, DONE, trackers); buffered output is
    flushed here, and nothing is left for teardown to do but that race. A failed run exits
    normally, so its tracebacks and atexit handlers stay as they are."""
    if code == 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    sys.exit(code)


if __name__ == "__main__":
    exit_launched_process(main())
