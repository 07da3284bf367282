"""W&B that works out of the box: offline unless the user is logged in."""

from __future__ import annotations

import netrc
import os
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


def wandb_logged_in() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger with ``offline`` decided for the user when not given.

    ``WANDB_MODE`` wins when set (``offline``, ``online``, ``disabled``); otherwise runs are
    synced only if the user is logged in, and written to ``<save_dir>/wandb/offline-run-*``
    (upload later with ``wandb sync``) if not, instead of failing for want of an API key.
    """

    def __init__(self, *args: Any, offline: bool | None = None, **kwargs: Any) -> None:
        if offline is None:
            mode = os.environ.get("WANDB_MODE")
            offline = mode in ("offline", "dryrun") if mode else not wandb_logged_in()
        super().__init__(*args, offline=offline, **kwargs)
