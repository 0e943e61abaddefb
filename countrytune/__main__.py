import sys

from countrytune.cli import main

sys.exit(main())
