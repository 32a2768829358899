"""``spikezoo validate``: evaluate a checkpoint on a recipe's evaluation set."""

from __future__ import annotations

import argparse

from spikezoo.cli.train import add_recipe_arguments, failure, load_config
from spikezoo_cli import progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint``, the recipe and overrides."""
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by train")
    add_recipe_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print loss, top-1 and top-5."""
    from spikezoo.train import CheckpointError, DatasetError, RecipeError, validate

    config = load_config(args)
    try:
        with progress("spikezoo validate", f"evaluating {args.checkpoint}"):
            metrics = validate(config, args.checkpoint)
    except (RecipeError, DatasetError, CheckpointError) as error:
        raise failure(error) from error
    print(f"loss {metrics['loss']:.4f}  top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%")
    return 0
