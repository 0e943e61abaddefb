import sys

from countrytune_cli.main import main

sys.exit(main())
