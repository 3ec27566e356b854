"""Keep the local Ray that dcn-ray starts itself on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

#: Ray's single-machine mode (its default on macOS and Windows): the node takes the loopback
#: address and every Ray server listens there. Read once, when Ray is imported.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_local_ray_on_loopback(address: str | None) -> None:
    """Before Ray is imported: a local Ray started later listens on 127.0.0.1 only.

    Without it, Ray 2.60 on Linux re-addresses even a 127.0.0.1 node to the machine's routable
    address and serves on every interface. Connecting to a cluster (``address`` or RAY_ADDRESS)
    needs Ray's normal mode, so nothing changes then; an explicit setting of the variable wins.
    """
    if address or os.environ.get("RAY_ADDRESS"):
        return
    if "ray" in sys.modules:
        log.debug("Ray is already imported: the local Ray keeps Ray's own address choice")
        return
    os.environ.setdefault(SINGLE_MACHINE_ENV, "0")
