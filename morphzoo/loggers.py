"""Logger helpers for recipes. The default logger is Lightning's CSVLogger; W&B is an optional extra."""

from __future__ import annotations

import netrc
import os

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


def wandb_logged_in() -> bool:
    """Whether W&B credentials exist (``WANDB_API_KEY`` or a ``~/.netrc`` entry for its API host)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        credentials = netrc.netrc()
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in credentials.hosts)


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger that runs offline unless you are logged in (``offline=None``, the default).

    Needs the extra: ``pip install "morphzoo[wandb]"``. Offline runs can be uploaded later with ``wandb sync``.
    """

    def __init__(self, project: str = "morphzoo", offline: bool | None = None, **kwargs) -> None:
        super().__init__(project=project, offline=(not wandb_logged_in()) if offline is None else offline, **kwargs)
