"""`python -m countrytune`: a launcher for the `countrytune` command (countrytune_cli), the one
module of the foundation allowed to name it; nothing imports this file."""

import sys

from countrytune_cli.main import main

sys.exit(main())
