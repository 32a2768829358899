"""``python -m spikezoo.train RECIPE [key=value ...]``: what ``torchrun -m spikezoo.train`` runs."""

import sys

from spikezoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
