"""``spikezoo push``: upload a converted model directory to the Hugging Face Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from spikezoo.cli.weights_errors import reported_as_command_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``DIR --repo-id ORG/NAME [--private]``."""
    parser.add_argument("directory", metavar="DIR", type=Path, help="from 'spikezoo convert'")
    parser.add_argument("--repo-id", required=True, help="Hub repository, e.g. spikezoo/NAME")
    parser.add_argument("--private", action="store_true", help="create the repository private")


def run(args: argparse.Namespace) -> int:
    """Push in one commit (token: HF_TOKEN or 'hf auth login'); print the commit URL."""
    from spikezoo.hub import push_folder

    with reported_as_command_errors("the token comes from HF_TOKEN or 'hf auth login'"):
        url = push_folder(args.directory, args.repo_id, private=args.private)
    print(f"pushed {args.directory} to {args.repo_id}: {url}")
    return 0
