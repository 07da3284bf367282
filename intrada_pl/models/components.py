"""Injected components (segmenters, optimisers, schedules) that remember how they were made.

A stage receives its network and its optimiser as objects (``segmenter:``, ``optimizer:`` and
``lr_scheduler:`` blocks of a config, ``class_path`` + ``init_args``). A checkpoint must be able to
rebuild them without the config, so every component records its own class path and the
arguments it was constructed with: :meth:`Component.spec` is that block, ready for
``hparams`` and YAML. Recording happens in ``__new__``, before any subclass ``__init__`` runs, so
no subclass has to remember to do it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any


def _plain(value: Any) -> Any:
    """``value`` as YAML writes and reads it back (tuples become lists)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Component:
    """Base of every injected component: ``spec()`` is ``{"class_path": ..., "init_args": ...}``."""

    _init_args: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Component:
        obj = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(obj, *args, **kwargs)
        except TypeError:  # copy / unpickle: no arguments, and __dict__ (with _init_args) is restored
            return obj
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(arguments)))  # self
        extra = arguments.pop("kwargs", None) if "kwargs" in inspect.signature(cls.__init__).parameters else None
        object.__setattr__(obj, "_init_args", {**{k: _plain(v) for k, v in arguments.items()}, **_plain(extra or {})})
        return obj

    def spec(self) -> dict[str, Any]:
        """The config block that rebuilds this component."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(self._init_args)}
