"""The test package tests/plugins/dcn_ray_toy_family "installed" into a folder: what pip would write.

A dist-info with its entry point (``dcn_ray.models``: ``toy``) beside a copy of the package, so
``importlib.metadata`` finds the family as it finds an installed one. :func:`toy_family` puts the
folder on this process's ``sys.path`` (and ``PYTHONPATH``, for subprocesses and Ray workers) and
rereads the registry; everything is undone afterwards.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PLUGIN = Path(__file__).resolve().parent / "plugins" / "dcn_ray_toy_family"
NAME = "toy"


def install(site: Path) -> Path:
    """Write the toy family's package and dist-info into ``site``; return ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PLUGIN / "dcn_ray_toy_family", site / "dcn_ray_toy_family", dirs_exist_ok=True)
    info = site / "dcn_ray_toy_family-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dcn-ray-toy-family\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[dcn_ray.models]\n{NAME} = dcn_ray_toy_family:FAMILY\n")
    return site


@contextmanager
def toy_family(site: Path) -> Iterator[Path]:
    """The toy family registered in this process (and in the processes it starts) while inside."""
    from dcn_ray import models

    install(site)
    before_path, before_env = list(sys.path), os.environ.get("PYTHONPATH")
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *([before_env] if before_env else [])])
    models.FAMILIES.refresh()
    try:
        yield site
    finally:
        sys.path[:] = before_path
        if before_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before_env
        for name in [m for m in sys.modules if m.split(".")[0] == "dcn_ray_toy_family"]:
            del sys.modules[name]
        models.FAMILIES.refresh()
