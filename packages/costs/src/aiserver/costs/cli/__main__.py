"""`python -m aiserver.costs.cli`: the `aiserver-costs` command."""

import sys

from aiserver.costs.cli import main

sys.exit(main())
