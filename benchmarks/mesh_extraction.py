"""Field queries, seconds and peak memory of coarse-to-fine against dense marching cubes, on one trained run.

The model is an existing run (`--load-config`) or, by default, `neus-dtu` shrunk by
`training.small_cpu_config` (geometry network of 4 layers of 64, radiance network of 2 layers of 64) and
trained for `--steps` on a synthetic scene, so that its zero level set is object-like. Each extraction runs in a
fresh child process that loads the run and reports its peak resident memory above what it held before extracting
(the model and the loaded libraries are not counted). A spawned child, not a forked one: a fork of a process
whose OpenMP threads have run (the training) can hang in the child. `docs/meshes.md` keeps results.

    python benchmarks/mesh_extraction.py                                  # short NeuS run, 256 and 512
    python benchmarks/mesh_extraction.py --load-config outputs/.../config.yml --resolutions 256 512 1024 --no-dense
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

from neurecon_ns.mesh.extract import extraction_stats
from neurecon_ns.mesh.model_mesh import extract_model_surface


def resident_kib(field: str) -> int:
    """`VmRSS` (now) or `VmHWM` (peak) of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _extract_in_child(config_path: Path, resolution: int, dense: bool, chunk_size: int, threads: int, queue) -> None:
    from neurecon_ns.runs import load_run

    torch.set_num_threads(threads)
    model = load_run(config_path, device="cpu").model.eval()
    # the peak so far is the loading's; reset it where the kernel allows
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    baseline = resident_kib("VmRSS")
    started = time.perf_counter()
    mesh = extract_model_surface(model, resolution=resolution, dense=dense, chunk_size=chunk_size)
    seconds = time.perf_counter() - started
    stats = extraction_stats(mesh)
    queue.put(
        {
            "resolution": resolution,
            "path": "dense" if dense else "coarse-to-fine",
            "queries": stats.num_queries,
            "coarse_queries": stats.num_coarse_queries,
            "coarse_grids": list(stats.coarse_resolutions),
            "seconds": seconds,
            "peak_mib": (resident_kib("VmHWM") - baseline) / 1024,
            "vertices": len(mesh.vertices),
            "faces": len(mesh.faces),
        }
    )


def measure(config_path: Path, resolution: int, dense: bool, chunk_size: int) -> Dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    args = (config_path, resolution, dense, chunk_size, torch.get_num_threads(), queue)
    child = context.Process(target=_extract_in_child, args=args)
    child.start()
    result = queue.get()
    child.join()
    return result


def short_run(steps: int, output_dir: Path) -> Path:
    from neurecon_ns.data.synthetic import write_scene
    from neurecon_ns.training import method_config, small_cpu_config, train

    scene = write_scene(output_dir / "scene", num_views=24, width=64, height=64, mesh_resolution=128)
    config = small_cpu_config(method_config("neus-dtu"), scene.output_dir, output_dir / "outputs", steps)
    train(config)  # writes config.yml before training
    return config.get_base_dir() / "config.yml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-config", type=Path, default=None, help="an existing run (default: train a short one)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the short run")
    parser.add_argument("--run-dir", type=Path, default=None, help="keep the short run here (default: a temporary folder)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--no-dense", action="store_true", help="skip the dense reference")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--chunk-size", type=int, default=2**16)
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from neurecon_ns.runs import load_run

    with tempfile.TemporaryDirectory() as scratch:
        config_path = args.load_config or short_run(args.steps, args.run_dir or Path(scratch))
        run = load_run(config_path, device="cpu")
        model = run.model.eval()
        geometry = model.config.networks.geometry
        print(f"model: {run.config.method_name}, geometry network {geometry.num_layers} x {geometry.hidden_dim}, "
              f"step {run.step}, {torch.get_num_threads()} CPU threads, load average {os.getloadavg()[0]:.1f}")
        results: List[Dict] = []
        for resolution in args.resolutions:
            for dense in ([False] if args.no_dense else [False, True]):
                result = measure(config_path, resolution, dense, args.chunk_size)
                result["load_average"] = os.getloadavg()[0]
                results.append(result)
                print(json.dumps(result))

    print("\n| resolution | path | field queries | seconds | peak extra memory (MiB) | faces |")
    print("|---|---|---|---|---|---|")
    for result in results:
        print(f"| {result['resolution']} | {result['path']} | {result['queries']:,} | {result['seconds']:.1f} | "
              f"{result['peak_mib']:.0f} | {result['faces']:,} |")
    for resolution in args.resolutions:
        pair = {r["path"]: r for r in results if r["resolution"] == resolution}
        if len(pair) == 2:
            fine, dense = pair["coarse-to-fine"], pair["dense"]
            print(f"{resolution}: {dense['queries'] / fine['queries']:.1f}x fewer queries, "
                  f"{dense['seconds'] / fine['seconds']:.1f}x faster, same faces: {fine['faces'] == dense['faces']}")
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
