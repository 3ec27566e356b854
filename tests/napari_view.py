"""napari on a virtual screen, for the tests that open dcn-ray's outputs as a biologist would."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

XVFB = shutil.which("xvfb-run")
HAVE_NAPARI = all(importlib.util.find_spec(name) for name in ("napari", "napari_ome_zarr", "PySide6"))


def needs_napari(test):
    """Skip ``test`` where napari (with napari-ome-zarr and Qt) or xvfb-run is missing."""
    test = pytest.mark.skipif(not HAVE_NAPARI, reason="napari is not installed: pip install -e '.[viewer]'")(test)
    no_screen = "xvfb-run is not installed (Debian: xvfb); napari needs a screen with GL"
    return pytest.mark.skipif(XVFB is None, reason=no_screen)(test)


def run_viewer(script: str, folder: Path, *args) -> subprocess.CompletedProcess:
    """Run the napari ``script`` (written to ``folder``/view.py) with ``args`` on a virtual screen."""
    path = folder / "view.py"
    path.write_text(script)
    return subprocess.run(
        [XVFB, "-a", "-s", "-screen 0 1280x1024x24", sys.executable, str(path), *map(str, args)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "QT_QPA_PLATFORM": "xcb"},
    )  # fmt: skip
