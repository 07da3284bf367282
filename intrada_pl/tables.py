"""Numbers and tables for the terminal, formatted one way: the IoU table of a validation, the
results and layer tables of ``intrada test``, the ranking quality line. It imports nothing, so
every layer may use it.
"""

from __future__ import annotations

from collections.abc import Sequence


def number(value: float | None, spec: str = ".2f") -> str:
    """``value`` formatted by ``spec``; ``n/a`` for an undefined one (None: no pixel, no label)."""
    return "n/a" if value is None else format(value, spec)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None, title: str | None = None) -> str:
    """Columns padded to fit and separated by two spaces; column i left-aligned if ``align[i]`` is
    ``l``, else right-aligned (default: the first left, numbers right); ``title`` on a line above."""
    align = align or "l" + "r" * (len(header) - 1)
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        padded = (str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(cells, widths, align))
        return "  ".join(padded).rstrip()

    return "\n".join(([title] if title else []) + [line(header), *map(line, rows)])
