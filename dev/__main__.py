"""`python -m dev`, which `hatch run dev` runs from the repository root."""

import sys

from dev.cli import main

sys.exit(main())
