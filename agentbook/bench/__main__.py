"""``python -m agentbook.bench``: run the benchmark suite (see :func:`agentbook.bench.main`)."""

from __future__ import annotations

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
