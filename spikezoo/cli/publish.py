"""``spikezoo publish``: convert and push every checkpoint of a manifest, all or nothing."""

from __future__ import annotations

import argparse
from pathlib import Path

from spikezoo.cli.weights_errors import reported_as_command_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``MANIFEST [--org ORG]``."""
    parser.add_argument("manifest", metavar="MANIFEST", type=Path, help="TOML manifest")
    parser.add_argument("--org", help="Hub organisation (default: the manifest's, or spikezoo)")


def run(args: argparse.Namespace) -> int:
    """Publish; print one commit URL per repository."""
    from spikezoo.hub import publish

    with reported_as_command_errors(f"fix {args.manifest} and run again; nothing was pushed"):
        urls = publish(args.manifest, args.org)
    print("\n".join(f"pushed {url}" for url in urls))
    return 0
