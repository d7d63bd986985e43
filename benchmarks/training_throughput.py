"""Training throughput of each method at its default size, against this machine's matmul peak.

For every method: nerfstudio's own `Trainer.train_iteration` (forward, losses, backward, optimiser) on a
synthetic scene, the median time of `--steps` iterations after `--warmup` (the median, because other
processes on a shared machine slow single steps). FLOPs of one iteration are counted from the
matrix products actually executed (forward pass, SDF-gradient graph, backward pass and the samplers'
no-grad queries: every `mm`/`addmm`/`bmm` and their in-place forms, through torch's FLOP formulas), and set
against the peak of a large fp32 matmul measured in the same run on the same device, before and after the
methods. Prints one table; `docs/benchmarks.md` keeps results.

    python benchmarks/training_throughput.py                       # all methods, CPU
    python benchmarks/training_throughput.py --methods neus-dtu --device cuda
    python benchmarks/training_throughput.py --methods neus-dtu --set networks.compile=True
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from neurecon_ns.data.synthetic import write_scene
from neurecon_ns.training import apply_model_settings, method_config, run_iteration, setup_trainer

DEFAULT_METHODS = ("neus-dtu", "volsdf-dtu", "unisurf-dtu", "neus-nerfpp", "volsdf-nerfpp", "neus-fast")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, size: int = 2048, repeats: int = 30, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of `size x size` matmuls in `dtype` (the best of `repeats`; `main` measures it before and after the
    methods and keeps the higher, as other processes on a shared machine can slow any one measurement)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best


def flop_formula(func):
    """torch's FLOP formula of an operator (matrix products, convolutions), None for the others; in-place
    products (`addmm_`) count as their originals."""
    packet = func._overloadpacket
    formula = flop_registry.get(packet)
    if formula is None and packet.__name__.endswith("_"):
        formula = flop_registry.get(getattr(torch.ops.aten, packet.__name__[:-1], None))
    return formula


class MatmulFlopCounter(TorchDispatchMode):
    """Adds up the FLOPs of every operator torch has a formula for (matrix products, convolutions).

    torch's own `FlopCounterMode` also tracks modules with backward hooks, which `autograd.grad` (the
    SDF gradient) does not support; counting at the dispatcher needs no hooks.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_formula(func)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def build_trainer(
    method: str,
    scene: Path,
    output_dir: Path,
    device: str,
    rays_per_batch: Optional[int] = None,
    settings: Sequence[str] = (),
):
    """The method at its default size (only the rays per batch and `NAME=VALUE` model settings changed,
    when given), set up on `device`."""
    config = method_config(method)
    config.machine.device_type = "cuda" if device.startswith("cuda") else "cpu"
    config.vis = "tensorboard"
    config.logging.local_writer.enable = False
    config.output_dir = output_dir
    config.data = scene
    config.pipeline.datamanager.data = scene
    if rays_per_batch is not None:
        config.pipeline.datamanager.train_num_rays_per_batch = rays_per_batch
    apply_model_settings(config, settings)
    return setup_trainer(config), config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="model settings by dotted name, e.g. networks.compile=True")
    args = parser.parse_args()

    from nerfstudio.configs.method_configs import all_methods

    work = Path(tempfile.mkdtemp(prefix="neurecon_bench_"))
    scene = work / "scene"
    write_scene(scene, num_views=16, width=128, height=128, mesh_resolution=64)
    peak = matmul_peak(args.device)
    rows = []
    for method in args.methods:
        if method not in all_methods:
            print(f"{method} is not registered, skipped")
            continue
        trainer, config = build_trainer(method, scene, work / "outputs", args.device, settings=args.set)
        rays = config.pipeline.datamanager.train_num_rays_per_batch
        for step in range(args.warmup):
            run_iteration(trainer, step)
        with MatmulFlopCounter() as counter:
            run_iteration(trainer, args.warmup)
        step_seconds = []
        for step in range(args.warmup + 1, args.warmup + 1 + args.steps):
            sync(args.device)
            started = time.perf_counter()
            run_iteration(trainer, step)
            sync(args.device)
            step_seconds.append(time.perf_counter() - started)
        seconds = statistics.median(step_seconds)
        rows.append((method, rays, seconds, counter.total))
        print(f"{method}: {seconds:.3f} s/step", flush=True)
        del trainer
    peak = max(peak, matmul_peak(args.device))

    print(f"device: {args.device}, threads: {torch.get_num_threads()}, fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    print(f"{'method':<16}{'rays/step':>10}{'s/step':>10}{'rays/s':>10}{'GFLOP/step':>12}{'GFLOP/s':>10}{'of peak':>9}")
    for method, rays, seconds, flops in rows:
        achieved = flops / seconds
        print(
            f"{method:<16}{rays:>10}{seconds:>10.3f}{rays / seconds:>10.0f}{flops / 1e9:>12.1f}"
            f"{achieved / 1e9:>10.1f}{achieved / peak:>9.1%}"
        )

if __name__ == "__main__":
    main()
