"""``python -m spikezoo``: the command line (``spikezoo`` itself starts faster, without torch)."""

import sys

from spikezoo.cli import main

sys.exit(main())
