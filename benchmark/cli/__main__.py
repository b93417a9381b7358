"""`python -m benchmark.cli`: the same as the `bench` console script."""

import sys

from benchmark.cli.app import main

sys.exit(main())
