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
    python bench/predict_volume.py --device cuda --width 64 --json figures.json   # on a GPU, the full-width DCN
    python bench/predict_volume.py --size 128 --repeats 1     # a smoke run in seconds

On a GPU the forward is synchronised before each timing and each case's peak GPU memory
(``torch.cuda.max_memory_allocated``) is reported beside the resident one.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 2048  # the base volume is (2, SIZE, SIZE); the wider one (2, 2 SIZE, 2 SIZE), the deeper one (8, SIZE, SIZE)
OTHER_TILES = (1024,)  # tile 512, the default before, is slower still
REPEATS = 3
WIDTH = 4


def shapes(size: int) -> dict[str, tuple[int, int, int]]:
    return {"base": (2, size, size), "wider": (2, 2 * size, 2 * size), "deeper": (8, size, size)}


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


def forward_rates(model_file: Path, volume: Path, device: str) -> list[float]:
    """Voxels per second of the bare forward of each slice, the slices already in memory (on ``device``)."""
    import torch
    import zarr

    from dcn_ray.core import checkpoint

    model, _ = checkpoint.load_model(model_file)
    model = model.to(device)
    slices = zarr.open_array(store=str(volume), path="0", mode="r")[...]
    images = [torch.from_numpy(s.astype(np.float32) / 255.0)[None, None].to(device) for s in slices]
    rates = []
    with torch.inference_mode():
        model(images[0][..., :256, :256])  # warm-up
        model(images[0])
        _synchronize(device)
        for image in images:
            started = time.perf_counter()
            model(image)
            _synchronize(device)
            rates.append(image.numel() / (time.perf_counter() - started))
    return rates


def _synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def predict_case(model_file: Path, volume: Path, output: Path, device: str, tile: int | None = None) -> dict:
    """predict_volume with the defaults (or ``tile``): voxels/s of each block and from start to finish."""
    import shutil

    import zarr

    from dcn_ray.predict.stack import PredictOptions
    from dcn_ray.predict.volume import predict_volume
    from dcn_ray.track.sources import load_source

    shutil.rmtree(output, ignore_errors=True)
    loaded = load_source(str(model_file))
    options = PredictOptions(tta=False, device=device, **({"tile": tile} if tile else {}))
    marks: list[tuple[float, int]] = []
    started = time.perf_counter()
    result = predict_volume(
        loaded, volume, output, options, progress=lambda *a: marks.append((time.perf_counter(), a[2]))
    )
    rate = result.voxels / (time.perf_counter() - started)
    blocks = [(n1 - n0) / (t1 - t0) for (t0, n0), (t1, n1) in zip(marks, marks[1:])]
    block = zarr.open_group(str(output), mode="r").attrs["dcn_ray"]["block"]
    return {"rate": rate, "block_rates": blocks, "blocks": result.blocks, "block": block}


def child(kind: str, folder: Path, volume: str, settings: dict) -> dict:
    import torch

    device = settings["device"]
    torch.set_num_threads(settings["threads"])
    model, source = folder / "model.pt", folder / volume
    if kind == "memory":
        case = predict_case(model, source, folder / f"out-{volume}", device)
        case["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        if device == "cuda":
            case["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return case
    forward, predicted = [], []
    for _ in range(settings["repeats"]):
        forward.extend(forward_rates(model, source, device))
        predicted.append(predict_case(model, source, folder / "out-throughput.ome.zarr", device))
    tiles = {tile: predict_case(model, source, folder / "out-tile.ome.zarr", device, tile) for tile in OTHER_TILES}
    return {"forward": forward, "predict": predicted, "tiles": tiles}


def _rates(rates: list[float]) -> str:
    return ", ".join(f"{rate / 1e6:.2f}" for rate in rates) + " Mvoxel/s"


def run(kind: str, folder: Path, volume: str, settings: dict) -> dict:
    command = [sys.executable, __file__, "--case", kind, str(folder), volume, json.dumps(settings)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--case":
        print(json.dumps(child(sys.argv[2], Path(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--width", type=int, default=WIDTH, help="DCN width (random weights)")
    parser.add_argument("--size", type=int, default=SIZE, help="side of the base volume's slices")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    settings = {"device": args.device, "threads": args.threads, "repeats": args.repeats}
    from dcn_ray.predict.stack import PredictOptions

    started = time.perf_counter()
    volumes = shapes(args.size)
    figures: dict = {"device": args.device, "width": args.width, "volumes": {k: list(v) for k, v in volumes.items()}}
    with tempfile.TemporaryDirectory(prefix="dcn-bench-volume-") as name:
        folder = Path(name)
        from common import random_dcn_file  # torch: only where a model is made

        random_dcn_file(folder / "model.pt", args.width)
        for label, shape in volumes.items():
            make_volume(folder / f"{label}.ome.zarr", shape)
        speed = run("throughput", folder, "base.ome.zarr", settings)
        blocks = [rate for case in speed["predict"] for rate in case["block_rates"]]
        whole = [case["rate"] for case in speed["predict"]]
        print(f"forward, each slice: {_rates(speed['forward'])}")
        print(f"predict, each block ({speed['predict'][0]['block']}): {_rates(blocks)}")
        print(f"predict, start to finish: {_rates(whole)}")
        best_forward = max(speed["forward"])
        print(
            f"base {volumes['base']}, default tile {PredictOptions().tile}: predict / forward = {max(blocks, default=0) / best_forward:.2f} "
            f"per block, {max(whole) / best_forward:.2f} start to finish (best of each; goal >= 0.8)"
        )
        figures.update(
            forward_voxels_per_s=max(speed["forward"]),
            predict_block_voxels_per_s=max(blocks, default=None),
            predict_voxels_per_s=max(whole),
            predict_over_forward=max(whole) / best_forward,
            tiles={},
        )
        for tile, case in speed["tiles"].items():
            print(
                f"tile {tile}: {case['blocks']} blocks of {case['block']}, {case['rate'] / 1e6:.2f} Mvoxel/s "
                f"= {case['rate'] / best_forward:.2f} x forward"
            )
            figures["tiles"][str(tile)] = {"voxels_per_s": case["rate"], "over_forward": case["rate"] / best_forward}
        base = run("memory", folder, "base.ome.zarr", settings)
        print(f"base {volumes['base']}: {base['blocks']} blocks of {base['block']}, peak {base['peak_mib']:.0f} MiB")
        figures["memory"] = {"base": _memory(base)}
        for label in ("wider", "deeper"):
            case = run("memory", folder, f"{label}.ome.zarr", settings)
            print(
                f"{label} {volumes[label]}: {case['blocks']} blocks of {case['block']}, peak {case['peak_mib']:.0f} MiB "
                f"= {case['peak_mib'] / base['peak_mib']:.2f} x base (goal <= 1.1)"
            )
            figures["memory"][label] = {**_memory(case), "over_base": case["peak_mib"] / base["peak_mib"]}
    figures["seconds"] = time.perf_counter() - started
    print(f"total {figures['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def _memory(case: dict) -> dict:
    return {k: case[k] for k in ("blocks", "block", "peak_mib", "gpu_peak_mib") if k in case}


if __name__ == "__main__":
    main()
