"""Input checks that more than one kind of figure shares."""
from __future__ import annotations

from collections.abc import Sequence

from ...errors import InvalidValueError


def check_class_names(classes: Sequence[str], k: int, what: str) -> None:
    """Raise unless there is one class name for each of the ``k`` classes of the ``what`` tensor."""
    if len(classes) != k:
        raise InvalidValueError(
            f"Expected {k} class names to match the {what} tensor, but got {len(classes)}."
        )
