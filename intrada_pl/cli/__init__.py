"""The ``intrada`` command line (:func:`main`; the console script is :func:`run`)."""

from intrada_pl.cli.dispatch import main, run

__all__ = ["main", "run"]
