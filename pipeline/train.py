"""`accelerate launch -m pipeline.train RECIPE`: the training entry point that launch templates
and users type. A launcher only: the loop lives in pipeline/training/loop.py."""

import sys

from pipeline.training.loop import TrainOutcome, main, train

__all__ = ["TrainOutcome", "main", "train"]

if __name__ == "__main__":
    sys.exit(main())
