"""Peak memory of one training iteration, per method and rays per batch.

For each method and batch size, a freshly spawned process sets up nerfstudio's trainer at the method's
default size (only the rays per batch changed) on a synthetic scene, runs one iteration to warm up, then
measures the next one: on a GPU the peak of `torch.cuda.max_memory_allocated` above what was allocated
before it, on a CPU the peak resident memory above the resident memory before it (Linux `VmHWM`, reset
through `/proc/self/clear_refs`), with `trainer.keep_freed_host_memory` off so that the warm-up's freed memory is not
already resident. Activations kept for the backward pass grow with rays x samples per ray;
the parameters and optimiser state do not. Prints one table; `docs/benchmarks.md` keeps results.

    python benchmarks/memory.py                                           # neus-dtu and neus-fast, 256-1024 rays
    python benchmarks/memory.py --methods volsdf-dtu unisurf-dtu --rays 512 1024 2048 --device cuda
    python benchmarks/memory.py --methods neus-dtu --set networks.geometry.implementation=reference
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
from pathlib import Path
from typing import Dict, Sequence

import torch
from mesh_extraction import resident_kib  # this folder is on sys.path when a script here runs
from training_throughput import build_trainer


def _measure_in_child(method: str, rays: int, scene: Path, device: str, threads: int, extra: list, queue) -> None:
    from neurecon_ns.training import run_iteration

    torch.set_num_threads(threads)
    # kept freed memory would make the step's peak look free: it would already be resident before the step
    settings = ["trainer.keep_freed_host_memory=False", *extra]
    trainer, _ = build_trainer(method, scene, scene.parent / "outputs", device, rays_per_batch=rays, settings=settings)
    run_iteration(trainer, 0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_iteration(trainer, 1)
        torch.cuda.synchronize()
        peak_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        Path("/proc/self/clear_refs").write_text("5")  # the peak so far is set-up's and the warm-up's
        before = resident_kib("VmRSS")
        run_iteration(trainer, 1)
        peak_mib = (resident_kib("VmHWM") - before) / 1024
    queue.put({"method": method, "rays": rays, "peak_mib": peak_mib})


def measure(method: str, rays: int, scene: Path, device: str, settings: Sequence[str] = ()) -> Dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(
        target=_measure_in_child, args=(method, rays, scene, device, torch.get_num_threads(), list(settings), queue)
    )
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["neus-dtu", "neus-fast"])
    parser.add_argument("--rays", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="model settings by dotted name, e.g. networks.geometry.implementation=reference")
    args = parser.parse_args()

    from neurecon_ns.data.synthetic import write_scene

    with tempfile.TemporaryDirectory() as workdir:
        scene = write_scene(Path(workdir) / "scene", num_views=16, width=128, height=128, mesh_resolution=64).output_dir
        what = "peak allocated above the step's start" if args.device.startswith("cuda") else "peak resident above the step's start"
        print(f"device: {args.device}, {torch.get_num_threads()} threads; memory = {what}")
        print(f"{'method':<14}{'rays':>7}{'MiB':>9}{'KiB/ray':>9}")
        for method in args.methods:
            for rays in args.rays:
                result = measure(method, rays, scene, args.device, args.set)
                print(f"{method:<14}{rays:>7}{result['peak_mib']:>9.0f}{result['peak_mib'] * 1024 / rays:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
