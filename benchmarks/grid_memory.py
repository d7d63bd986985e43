"""Peak host memory of a query of the torch hash grid outside autograd (rendering, meshing, the samplers).

A fresh process per setting builds neus-fast's geometry network (16 levels up to 2048, tables of 2^19, the
torch grid), evaluates `--points` random points with `torch.no_grad()`, and reports the rise of the peak
resident memory (Linux `VmHWM`) over what was resident before, per point. `--chunk 0` evaluates the grid in
one piece (what a query of that size cost without the grid's own chunking); each other value is the grid's
`query_chunk_size`.

    python benchmarks/grid_memory.py                         # 1.8M points: one piece against 65,536-point pieces
    python benchmarks/grid_memory.py --points 500000 --chunk 0 16384 65536 262144
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import torch
from mesh_extraction import resident_kib  # this folder is on sys.path when a script here runs


def _measure(points: int, chunk: int, queue) -> None:
    from neurecon_ns.methods import neus_fast

    geometry = neus_fast.config.pipeline.model.networks.geometry
    geometry.hash_grid.implementation = "torch"
    network = geometry.setup()
    network.encoding.update_to_step(10**6)  # every level active
    grids = network.encoding.grids
    grids.query_chunk_size = chunk if chunk > 0 else points
    query = torch.rand(points, 3) * 2.0 - 1.0
    before = resident_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current resident memory
    start = time.perf_counter()
    with torch.no_grad():
        network.level_value(query)
    seconds = time.perf_counter() - start
    queue.put(((resident_kib("VmHWM") - before) * 1024 / points, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1_800_000)
    parser.add_argument("--chunk", type=int, nargs="+", default=[0, 1 << 16])
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    print(f"{'grid chunk':>12} {'peak bytes/point':>17} {'peak MB':>9} {'seconds':>8}")
    for chunk in args.chunk:
        queue = context.Queue()
        process = context.Process(target=_measure, args=(args.points, chunk, queue))
        process.start()
        per_point, seconds = queue.get()
        process.join()
        label = "one piece" if chunk == 0 else str(chunk)
        print(f"{label:>12} {per_point:>17.0f} {per_point * args.points / 1e6:>9.0f} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
