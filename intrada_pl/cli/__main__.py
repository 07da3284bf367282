"""``python -m intrada_pl.cli``: the ``intrada`` console script."""

from intrada_pl.cli.dispatch import run

run()
