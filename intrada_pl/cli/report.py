"""How ``intrada`` reports bad input: one ``intrada: error:`` line and exit status 2."""

from __future__ import annotations

import re
import sys
from typing import NoReturn

from intrada_pl.errors import BadInputError


def fail(message: str) -> NoReturn:
    """Report bad input as the console script does: one ``intrada: error:`` line, exit status 2."""
    print(f"intrada: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def bad_input(error: BaseException | None) -> BaseException | None:
    """The first bad-input error in ``error``'s chain of causes and contexts, as a traceback shows
    them: ours (:mod:`intrada_pl.cli.lightning` turns a Trainer setting Lightning refuses into
    one) or a missing file."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (BadInputError, FileNotFoundError)):
            return error
        seen.add(id(error))
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


def original_message(error: BaseException) -> str:
    """The error's message; for one that a DataLoader worker raised, which PyTorch raises again
    in the main process with the worker's traceback as its message, the original message alone."""
    text = str(error)
    if not re.match(r"Caught \w+ in .*\nOriginal Traceback \(most recent call last\):\n", text):
        return text
    lines = text.rsplit("Traceback (most recent call last):\n", 1)[1].rstrip().split("\n")
    first = next((i for i, line in enumerate(lines) if not line.startswith(" ")), len(lines))  # after the frames
    return "\n".join(lines[first:]).partition(": ")[2] or text


