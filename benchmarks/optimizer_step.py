"""Time of one Adam step over a method's parameters: torch's default (multi-tensor) update against the fused one
that the plugin's methods use (`FusedAdamOptimizerConfig`).

The method is built at its CPU size (`training.small_cpu_config`: for neus-fast, a torch hash grid of 8 levels in
tables of 2^19 rows, about 5 million numbers) on a small synthetic scene; each optimiser group gets the same
gradients in both updates; the median of `--steps` timed steps is printed with the ratio, then the largest
difference between the parameters the two updates reach.

    python benchmarks/optimizer_step.py                      # neus-fast, this machine's threads
    python benchmarks/optimizer_step.py --methods neus-fast neus-dtu --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from precision import machine_line  # this folder is on sys.path when a script here runs

from neurecon_ns.data.synthetic import write_scene
from neurecon_ns.engine.optimizers import FusedAdamOptimizerConfig
from neurecon_ns.training import method_config, setup_trainer, small_cpu_config


def time_update(parameters, settings: FusedAdamOptimizerConfig, gradients, steps: int):
    parameters = [torch.nn.Parameter(p.detach().clone()) for p in parameters]
    optimizer = settings.setup(params=parameters)
    seconds = []
    for step in range(steps + 2):
        for parameter, gradient in zip(parameters, gradients):
            parameter.grad = gradient * (1.0 + 0.01 * step)
        started = time.perf_counter()
        optimizer.step()
        if step >= 2:  # the first steps allocate the moments
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["neus-fast"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("machine:", machine_line("cpu"), flush=True)

    work = Path(tempfile.mkdtemp(prefix="neurecon_optimizer_"))
    scene = write_scene(work / "scene", num_views=4, width=32, height=32, mesh_resolution=48)
    print("| method | group | parameters | default update ms | fused update ms | default / fused | largest difference |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for method in args.methods:
        config = small_cpu_config(method_config(method), scene.output_dir, work / method, steps=100)
        trainer = setup_trainer(config)
        generator = torch.Generator().manual_seed(0)
        for group, parameters in trainer.optimizers.parameters.items():
            settings = config.optimizers[group]["optimizer"]
            gradients = [torch.randn(p.shape, generator=generator) * 1e-3 for p in parameters]
            default_update = FusedAdamOptimizerConfig(lr=settings.lr, eps=settings.eps, fused=False)
            fused_update = FusedAdamOptimizerConfig(lr=settings.lr, eps=settings.eps, fused=True)
            default_seconds, default_result = time_update(parameters, default_update, gradients, args.steps)
            fused_seconds, fused_result = time_update(parameters, fused_update, gradients, args.steps)
            difference = max(float((a - b).abs().max()) for a, b in zip(default_result, fused_result))
            count = sum(p.numel() for p in parameters)
            print(
                f"| {method} | {group} | {count:,} | {default_seconds * 1e3:.2f} | {fused_seconds * 1e3:.2f} | "
                f"{default_seconds / fused_seconds:.2f} | {difference:.1e} |"
            )


if __name__ == "__main__":
    main()
