"""``spikezoo list``: the registered models, or their pretrained ``model.tag`` names."""

from __future__ import annotations

import argparse
import fnmatch

from spikezoo.cli.common import LIST_HINT, TAGS_HINT, did_you_mean, spikezoo_names
from spikezoo.cli.errors import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``[filter]`` wildcard pattern and ``--pretrained``."""
    parser.add_argument("filter", nargs="?", default="*", help="wildcard pattern, e.g. 'sdt_*'")
    parser.add_argument("--pretrained", action="store_true", help="list 'model.tag' names")


def run(args: argparse.Namespace) -> int:
    """Print one name per line; a pattern that matches nothing is an error."""
    names = spikezoo_names(pretrained=args.pretrained)
    matches = fnmatch.filter(names, args.filter)
    if not matches:
        kind, pointer = ("pretrained tag", TAGS_HINT) if args.pretrained else ("model", LIST_HINT)
        hint = did_you_mean(args.filter, names, pointer)
        raise CommandError(f"no spikezoo {kind} matches {args.filter!r}", hint=hint)
    print("\n".join(matches))
    return 0
