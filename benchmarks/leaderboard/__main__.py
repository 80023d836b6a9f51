"""``python -m benchmarks.leaderboard``: see :mod:`benchmarks.leaderboard`."""

import sys

from benchmarks.leaderboard.main import main

if __name__ == "__main__":
    sys.exit(main())
