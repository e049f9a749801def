"""``python -m agentbook``: the command line (see :mod:`agentbook.cli`)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
