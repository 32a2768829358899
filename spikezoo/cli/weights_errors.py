"""The weight commands' errors (``convert``, ``push``, ``publish``) as one-line CommandErrors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from spikezoo.cli.errors import CommandError


@contextmanager
def reported_as_command_errors(hint: str) -> Iterator[None]:
    """Turn the weights' errors and checkpoint mismatches into :class:`CommandError`."""
    from spikezoo.hub.convert import mismatch_counts
    from spikezoo.models import CheckpointMismatchError
    from spikezoo.weights import WeightsError

    try:
        yield
    except CheckpointMismatchError as error:
        likely = f"; it fits {error.likely_model}" if error.likely_model else ""
        raise CommandError(
            f"the checkpoint does not fit the model ({mismatch_counts(error)}{likely})", hint
        ) from None
    except (WeightsError, ValueError) as error:
        raise CommandError(" ".join(str(error).split()), hint) from None
