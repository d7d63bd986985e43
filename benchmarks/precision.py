"""Training steps in float32 and in bfloat16, side by side in one run.

For each method at its default size (the paper networks), two trainers on the synthetic scene of
`training_throughput.py`, one with `networks.precision=fp32` and one with `networks.precision=bf16`, take turns:
a step of one, a step of the other, `--steps` times, after `--warmup` steps each; the table gives the medians
(s/step, rays/s), the FLOPs of the matrix products of one step, and their rate as a fraction of the fp32 and of
the bf16 matmul peaks, both measured in the same run, before and after the methods (the higher kept). Taking
turns is what makes the ratio meaningful on a machine shared with other work, whose load is printed with the
CPU's model and bf16 flags.

    python benchmarks/precision.py                                   # neus-dtu, volsdf-dtu, unisurf-dtu
    python benchmarks/precision.py --methods neus-dtu --steps 3 --rays 256
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from training_throughput import MatmulFlopCounter, build_trainer, matmul_peak, sync

from neurecon_ns.data.synthetic import write_scene
from neurecon_ns.training import run_iteration
from neurecon_ns.utils.precision import BF16_MATRIX_UNIT_FLAGS, cpu_flags

PRECISIONS = ("fp32", "bf16")


def machine_line(device: str) -> str:
    """The CPU's model name and bf16 flags (or the GPU's name), and the load average now."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or "unknown CPU"
        try:
            lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
            name = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
        except (OSError, subprocess.CalledProcessError, StopIteration):
            pass
        flags = cpu_flags() or set()
        name += f", bf16 flags: {' '.join(flag for flag in BF16_MATRIX_UNIT_FLAGS if flag in flags) or 'none'}"
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{name}, {torch.get_num_threads()} threads, load average {load}"


def timed_step(trainer, step: int, device: str) -> float:
    sync(device)
    started = time.perf_counter()
    run_iteration(trainer, step)
    sync(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["neus-dtu", "volsdf-dtu", "unisurf-dtu"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rays", type=int, default=None, help="rays per batch (default: the method's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="model settings for both precisions")
    args = parser.parse_args()

    print("start:", machine_line(args.device), flush=True)
    work = Path(tempfile.mkdtemp(prefix="neurecon_precision_"))
    scene = work / "scene"
    write_scene(scene, num_views=16, width=128, height=128, mesh_resolution=64)
    peaks = {"fp32": matmul_peak(args.device), "bf16": matmul_peak(args.device, dtype=torch.bfloat16)}
    rows = []
    for method in args.methods:
        trainers, flops, seconds = {}, {}, {precision: [] for precision in PRECISIONS}
        for precision in PRECISIONS:
            settings = [*args.set, f"networks.precision={precision}"]
            trainer, config = build_trainer(method, scene, work / precision, args.device, args.rays, settings)
            rays = config.pipeline.datamanager.train_num_rays_per_batch
            for step in range(args.warmup):
                run_iteration(trainer, step)
            with MatmulFlopCounter() as counter:
                run_iteration(trainer, args.warmup)
            trainers[precision], flops[precision] = trainer, counter.total
        for step in range(args.warmup + 1, args.warmup + 1 + args.steps):
            for precision in PRECISIONS:
                seconds[precision].append(timed_step(trainers[precision], step, args.device))
            print(f"{method} step {step}: " + ", ".join(f"{p} {seconds[p][-1]:.2f} s" for p in PRECISIONS), flush=True)
        for precision in PRECISIONS:
            rows.append((method, precision, rays, statistics.median(seconds[precision]), flops[precision]))
        del trainers
    for precision in PRECISIONS:
        dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        peaks[precision] = max(peaks[precision], matmul_peak(args.device, dtype=dtype))

    print("end:", machine_line(args.device))
    print(f"matmul peaks (2048^3): fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s")
    header = f"{'method':<14}{'precision':>10}{'rays':>6}{'s/step':>9}{'rays/s':>8}{'GFLOP':>8}{'GFLOP/s':>9}"
    print(header + f"{'of fp32 peak':>14}{'of bf16 peak':>14}{'speed-up':>10}")
    fp32_seconds = {method: s for method, precision, _, s, _ in rows if precision == "fp32"}
    for method, precision, rays, step_seconds, step_flops in rows:
        achieved = step_flops / step_seconds
        print(
            f"{method:<14}{precision:>10}{rays:>6}{step_seconds:>9.3f}{rays / step_seconds:>8.0f}{step_flops / 1e9:>8.1f}"
            f"{achieved / 1e9:>9.1f}{achieved / peaks['fp32']:>14.1%}{achieved / peaks['bf16']:>14.1%}"
            f"{fp32_seconds[method] / step_seconds:>9.2f}x"
        )


if __name__ == "__main__":
    main()
