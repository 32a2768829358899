"""``spikezoo train``: train a model from a recipe plus ``key=value`` overrides."""

from __future__ import annotations

import argparse

from spikezoo.cli.errors import CommandError


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe (name or path) and the overrides, shared with ``spikezoo validate``."""
    parser.add_argument(
        "recipe",
        nargs="?",
        help="a committed recipe's name (e.g. sdt_cifar10) or a .yaml path (default: digits)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. optim.lr=1e-3"
    )
    parser.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override (repeatable), same as a positional KEY=VALUE",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe, overrides and ``--list``."""
    add_recipe_arguments(parser)
    parser.add_argument("--list", action="store_true", help="list the committed recipes")


def load_config(args: argparse.Namespace):
    """The recipe with its overrides; a recipe given as ``key=value`` counts as an override."""
    from spikezoo.train import RecipeError, load_recipe

    recipe, overrides = args.recipe, [*args.overrides, *args.extra]
    if recipe is not None and "=" in recipe:
        recipe, overrides = None, [recipe, *overrides]
    try:
        return load_recipe(recipe or "digits", overrides)
    except RecipeError as error:
        raise CommandError(str(error), hint="see docs/training.md for the recipe keys") from error


def failure(error: Exception) -> CommandError:
    """A training error as a one-line CommandError."""
    return CommandError(str(error))


def run(args: argparse.Namespace) -> int:
    """Train; print the final metrics."""
    from spikezoo.train import (
        CheckpointError,
        DatasetError,
        RecipeError,
        TrainingError,
        list_recipes,
        train,
    )

    if args.list:
        print("\n".join(list_recipes()))
        return 0
    config = load_config(args)
    try:
        metrics = train(config)
    except (RecipeError, DatasetError, CheckpointError, TrainingError) as error:
        raise failure(error) from error
    print(f"best top-1 {metrics['best_top1']:.2f}% (checkpoints in {config.run.output})")
    return 0
