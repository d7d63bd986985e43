"""Where one training iteration's time goes, operator by operator.

Times every operator torch dispatches during `--steps` iterations of nerfstudio's training iteration (after
`--warmup`), on the method at its default size and the synthetic scene of `training_throughput.py`, and
prints the operators by total time, grouped by input shapes, with the GFLOP/s of the matrix products, then
the totals of products, softplus and other operators. Timing at the dispatcher adds a few microseconds per
operator; the table is for finding what to change, `training_throughput.py` for the step's speed.

    python benchmarks/step_profile.py                        # neus-dtu, CPU
    python benchmarks/step_profile.py --method unisurf-dtu --top 40
    python benchmarks/step_profile.py --set networks.precision=bf16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from training_throughput import build_trainer, flop_formula, sync

from neurecon_ns.data.synthetic import write_scene
from neurecon_ns.training import run_iteration


class OperatorTimer(TorchDispatchMode):
    """Seconds and FLOPs per (operator, input shapes)."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = device
        self.calls = defaultdict(lambda: [0, 0.0, 0])  # (name, shapes) -> [count, seconds, flops]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        sync(self.device)
        started = time.perf_counter()
        out = func(*args, **kwargs)
        sync(self.device)
        seconds = time.perf_counter() - started
        shapes = tuple(tuple(arg.shape) for arg in args if isinstance(arg, torch.Tensor))
        formula = flop_formula(func)
        entry = self.calls[(func._overloadpacket.__name__, shapes)]
        entry[0] += 1
        entry[1] += seconds
        entry[2] += formula(*args, **kwargs, out_val=out) if formula is not None else 0
        return out


def category(name: str, flops: int) -> str:
    if flops > 0:
        return "matrix products"
    return "softplus" if name == "softplus" else "other operators"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="neus-dtu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=30, help="operators to list")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="model settings by dotted name, e.g. networks.precision=bf16")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="neurecon_profile_"))
    scene = work / "scene"
    write_scene(scene, num_views=16, width=128, height=128, mesh_resolution=64)
    trainer, _ = build_trainer(args.method, scene, work / "outputs", args.device, settings=args.set)
    for step in range(args.warmup):
        run_iteration(trainer, step)
    timer = OperatorTimer(args.device)
    step_seconds = []
    with timer:
        for step in range(args.warmup, args.warmup + args.steps):
            started = time.perf_counter()
            run_iteration(trainer, step)
            step_seconds.append(time.perf_counter() - started)

    steps = args.steps
    rows = sorted(timer.calls.items(), key=lambda item: -item[1][1])
    print(f"{args.method} on {args.device}, {torch.get_num_threads()} threads: "
          f"{' / '.join(f'{seconds:.2f}' for seconds in step_seconds)} s per step (timed at the dispatcher)")
    print(f"{'operator':<22}{'input shapes':<58}{'calls':>6}{'ms/step':>9}{'GFLOP/s':>9}")
    for (name, shapes), (count, seconds, flops) in rows[: args.top]:
        rate = f"{flops / seconds / 1e9:.0f}" if flops else ""
        print(f"{name:<22}{str(list(shapes))[:57]:<58}{count // steps:>6}{seconds / steps * 1e3:>9.1f}{rate:>9}")
    totals = defaultdict(float)
    for (name, _), (_, seconds, flops) in timer.calls.items():
        totals[category(name, flops)] += seconds / steps
    print("per step: " + ", ".join(f"{key} {value:.2f} s" for key, value in sorted(totals.items())))


if __name__ == "__main__":
    main()
