"""``spikezoo list``: the registered models, or the ``model.tag`` names that have weights."""

from __future__ import annotations

import argparse
import fnmatch
import sys

from spikezoo.cli.common import LIST_HINT, TAGS_HINT, did_you_mean, spikezoo_names
from spikezoo.cli.errors import CommandError

#: What ``list --pretrained`` says of the tags it leaves out.
NO_WEIGHTS = (
    "the authors released none, and none are installed or published; train your own "
    "('spikezoo train') and install it with 'spikezoo convert'"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``[filter]`` wildcard pattern and ``--pretrained``."""
    parser.add_argument("filter", nargs="?", default="*", help="wildcard pattern, e.g. 'sdt_*'")
    parser.add_argument(
        "--pretrained", action="store_true", help="list the 'model.tag' names that have weights"
    )


def run(args: argparse.Namespace) -> int:
    """Print one name per line; a pattern that matches nothing is an error.

    With ``--pretrained`` only the tags with weights are printed; the matching tags without
    any are named in one note on stderr.
    """
    names = spikezoo_names(pretrained=args.pretrained)
    matches = fnmatch.filter(names, args.filter)
    if not matches:
        kind, pointer = ("pretrained tag", TAGS_HINT) if args.pretrained else ("model", LIST_HINT)
        hint = did_you_mean(args.filter, names, pointer)
        raise CommandError(f"no spikezoo {kind} matches {args.filter!r}", hint=hint)
    if args.pretrained:
        matches, without = _split_by_weights(matches)
        if not matches:
            raise CommandError(
                f"no tag matching {args.filter!r} has weights ({', '.join(without)}: {NO_WEIGHTS})",
                hint=TAGS_HINT,
            )
        if without:
            print(
                f"spikezoo list: left out {len(without)} tags without weights "
                f"({', '.join(without)}): {NO_WEIGHTS}",
                file=sys.stderr,
            )
    print("\n".join(matches))
    return 0


def _split_by_weights(tags: list[str]) -> tuple[list[str], list[str]]:
    """``tags`` with weights somewhere (:func:`~spikezoo.weights.weight_sources`), and the rest."""
    import timm

    from spikezoo.weights import weight_sources

    with_weights = [tag for tag in tags if weight_sources(timm.models.get_pretrained_cfg(tag))]
    return with_weights, [tag for tag in tags if tag not in with_weights]
