"""`python -m aiserver.ledger.cli`: the same as `aiserver-ledger`."""

import sys

from aiserver.ledger.cli import main

sys.exit(main())
