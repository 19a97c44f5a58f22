"""``python -m bench``: run every benchmark, print the tables, write bench/RESULTS.md."""

import sys

from bench.run import main

sys.exit(main())
