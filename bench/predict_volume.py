"""Benchmark volume prediction: throughput against the bare model, and memory against the volume's size.

In one run (2 torch threads, CPU, DCN width 4 with random weights, no TTA):

- throughput, in one fresh process that alternates, ``REPEATS`` times, (a) the bare model forward
  (``model(x)``, nothing else) over every slice of the base volume, held in memory as float32,
  and (b) ``predict_volume`` of the same volume, an OME-Zarr on disk, into a new OME-Zarr output
  with the default tile, chunks and blocks (reading, halos, softmax, encoding, writing). Each slice
  of (a) and each block of (b) is timed, and the best of each is compared: alternating in one
  process, and taking the best of short runs, keeps the load of a shared machine (which drifts by
  minutes) out of the ratio; predict's rate from start to finish (store setup included) is printed
  beside it; then once with ``--tile 1024``, to choose the default;
- memory, each case in its own fresh process: ``predict_volume`` of the base volume and of
  volumes with 4 times its voxels (2x Y and 2x X; 4x Z), peak resident memory (``ru_maxrss``).

Goals: predict / forward >= 0.8 (voxels per second) and peak(4x) / peak(base) <= 1.1.

    python bench/predict_volume.py        # about four minutes on 2 idle cores
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BASE = (2, 2048, 2048)
WIDER = (2, 4096, 4096)
DEEPER = (8, 2048, 2048)
OTHER_TILES = (1024,)  # tile 512, the default before, is slower still
REPEATS = 3
WIDTH = 4


def make_model(path: Path) -> None:
    import torch

    from dcn_ray.core import checkpoint
    from dcn_ray.models.dcn import DCN

    torch.manual_seed(0)
    model = DCN(kernels=(4, 8, 16), width=WIDTH).eval()
    payload = {"format": checkpoint.FORMAT, "model_kwargs": dict(model.kwargs), "kernels": [4, 8, 16]}
    checkpoint.save({**payload, "weights": model.state_dict(), "config": {}, "step": 0}, path)


def make_volume(path: Path, shape: tuple[int, int, int]) -> None:
    """An OME-Zarr 0.4 image of random uint8 voxels, chunks (1, 512, 512), written slice by slice."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_multiscales_metadata

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    array = root.create_array("0", shape=shape, chunks=(1, 512, 512), dtype="uint8")
    rng = np.random.default_rng(0)
    for z in range(shape[0]):
        array[z] = rng.integers(0, 256, shape[1:], dtype=np.uint8)
    scale = [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]
    write_multiscales_metadata(root, [{"path": "0", "coordinateTransformations": scale}], fmt=FormatV04(), axes="zyx")


def forward_rates(model_file: Path, volume: Path) -> list[float]:
    """Voxels per second of the bare forward of each slice, the slices already in memory."""
    import torch
    import zarr

    from dcn_ray.core import checkpoint

    model, _ = checkpoint.load_model(model_file)
    slices = zarr.open_array(store=str(volume), path="0", mode="r")[...]
    images = [torch.from_numpy(s.astype(np.float32) / 255.0)[None, None] for s in slices]
    rates = []
    with torch.inference_mode():
        model(images[0][..., :256, :256])  # warm-up
        for image in images:
            started = time.perf_counter()
            model(image)
            rates.append(image.numel() / (time.perf_counter() - started))
    return rates


def predict_case(model_file: Path, volume: Path, output: Path, tile: int | None = None) -> dict:
    """predict_volume with the defaults (or ``tile``): voxels/s of each block and from start to finish."""
    import shutil

    import zarr

    from dcn_ray.predict.stack import PredictOptions
    from dcn_ray.predict.volume import predict_volume
    from dcn_ray.track.sources import load_source

    shutil.rmtree(output, ignore_errors=True)
    loaded = load_source(str(model_file))
    options = PredictOptions(tta=False, device="cpu", **({"tile": tile} if tile else {}))
    marks: list[tuple[float, int]] = []
    started = time.perf_counter()
    result = predict_volume(
        loaded, volume, output, options, progress=lambda *a: marks.append((time.perf_counter(), a[2]))
    )
    rate = result.voxels / (time.perf_counter() - started)
    blocks = [(n1 - n0) / (t1 - t0) for (t0, n0), (t1, n1) in zip(marks, marks[1:])]
    block = zarr.open_group(str(output), mode="r").attrs["dcn_ray"]["block"]
    return {"rate": rate, "block_rates": blocks, "blocks": result.blocks, "block": block}


def child(kind: str, folder: Path, volume: str) -> dict:
    import torch

    torch.set_num_threads(2)
    model, source = folder / "model.pt", folder / volume
    if kind == "memory":
        case = predict_case(model, source, folder / f"out-{volume}")
        case["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return case
    forward, predicted = [], []
    for _ in range(REPEATS):
        forward.extend(forward_rates(model, source))
        predicted.append(predict_case(model, source, folder / "out-throughput.ome.zarr"))
    tiles = {tile: predict_case(model, source, folder / "out-tile.ome.zarr", tile) for tile in OTHER_TILES}
    return {"forward": forward, "predict": predicted, "tiles": tiles}


def _rates(rates: list[float]) -> str:
    return ", ".join(f"{rate / 1e6:.2f}" for rate in rates) + " Mvoxel/s"


def run(kind: str, folder: Path, volume: str) -> dict:
    command = [sys.executable, __file__, "--case", kind, str(folder), volume]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--case":
        print(json.dumps(child(sys.argv[2], Path(sys.argv[3]), sys.argv[4])))
        return
    from dcn_ray.predict.stack import PredictOptions

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dcn-bench-volume-") as name:
        folder = Path(name)
        make_model(folder / "model.pt")
        for label, shape in (("base", BASE), ("wider", WIDER), ("deeper", DEEPER)):
            make_volume(folder / f"{label}.ome.zarr", shape)
        speed = run("throughput", folder, "base.ome.zarr")
        blocks = [rate for case in speed["predict"] for rate in case["block_rates"]]
        whole = [case["rate"] for case in speed["predict"]]
        print(f"forward, each slice: {_rates(speed['forward'])}")
        print(f"predict, each block ({speed['predict'][0]['block']}): {_rates(blocks)}")
        print(f"predict, start to finish: {_rates(whole)}")
        best_forward = max(speed["forward"])
        print(
            f"base {BASE}, default tile {PredictOptions().tile}: predict / forward = {max(blocks) / best_forward:.2f} "
            f"per block, {max(whole) / best_forward:.2f} start to finish (best of each; goal >= 0.8)"
        )
        for tile, case in speed["tiles"].items():
            print(
                f"tile {tile}: {case['blocks']} blocks of {case['block']}, {case['rate'] / 1e6:.2f} Mvoxel/s "
                f"= {case['rate'] / best_forward:.2f} x forward"
            )
        base = run("memory", folder, "base.ome.zarr")
        print(f"base {BASE}: {base['blocks']} blocks of {base['block']}, peak {base['peak_mib']:.0f} MiB")
        for label, shape in (("wider", WIDER), ("deeper", DEEPER)):
            case = run("memory", folder, f"{label}.ome.zarr")
            print(
                f"{label} {shape}: {case['blocks']} blocks of {case['block']}, peak {case['peak_mib']:.0f} MiB "
                f"= {case['peak_mib'] / base['peak_mib']:.2f} x base (goal <= 1.1)"
            )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
