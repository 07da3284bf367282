"""Bad input the user can fix: one base class, so that the console script reports every such
error the same way (``intrada: error: <message>``, exit status 2, no traceback).

Each error keeps a second, standard base (``FileNotFoundError``, ``ValueError``, ``OSError``)
so that code catching those still catches it. Its message names the file or option at fault
and what was expected.
"""

from __future__ import annotations


class BadInputError(Exception):
    """A file, dataset or option value that the user can fix (base of every such error)."""


class ConfigValueError(BadInputError, ValueError):
    """An option value that a class refuses (e.g. ``lambda_`` outside (0, 1], an unknown test-time method)."""
