"""Console hygiene: what every ``intrada`` command prints should be about the user's run.

Lightning, jsonargparse and torchdata print advertisements and deprecation notices about their
own internals on every run; they are silenced here, by message, so a warning about the user's
data or model still shows. Warnings print as one line, ``intrada: warning: <message>``, not
as a file/line plus the source line that raised them.
"""

from __future__ import annotations

import logging
import warnings

# (message regex, why it is noise for our users)
IRRELEVANT_WARNINGS = (
    (r"(?s).*(JsonargparseDeprecationWarning|was deprecated in v4\.)", "jsonargparse notices about Lightning's own calls"),
    (r"LightningCLI's args parameter is intended", "intrada dispatches the command and passes LightningCLI the rest"),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", "torch notice about Lightning's own code"),
    (r"'set_vital' is deprecated", "torch notice about torchdata's own code"),
    (r"Precision .* is not supported by the model summary", "the summary's size estimate only"),
)
ADVERTISEMENTS = ("💡 Tip:",)


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERTISEMENTS)


def _one_line(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 (warnings' signature)
    return f"intrada: warning: {message}\n"


def silence_noise() -> None:
    """Install the filters above and the one-line warning format (idempotent)."""
    for pattern, _why in IRRELEVANT_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)

    warnings.formatwarning = _one_line
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdvertisements) for f in logger.filters):
            logger.addFilter(_DropAdvertisements())
