"""``python -m spikezoo``: the command line."""

import sys

from spikezoo.cli import main

sys.exit(main())
