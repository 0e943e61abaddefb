"""`pipeline.train` with the Triton kernels run by Triton's CPU interpreter (tests only):
`accelerate launch tests/interpreted_train.py RECIPE ...`. See kernel_interpreter.py."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import kernel_interpreter

kernel_interpreter.enable()
os.environ["TRITON_INTERPRET"] = "1"  # kernels.implementation auto -> triton here

from pipeline.train import main

sys.exit(main())
