"""The kernels of a paper-size layer in float32 and bfloat16, side by side in one run.

At 65,536 points x 256 channels (one layer of `neus-dtu`'s step): the layer's product, the weight gradient's
product (a reduction over the points), the element-wise passes of the closed-form node, and softplus with its
slope three ways: torch's two kernels, `softplus_and_slope` (the activation from the slope, what the node runs)
and a `torch.compile`d kernel of the pair (`--compiled`; it needs a C++ compiler). Each kernel's time is the
median of `--repeats` calls, the kernels and dtypes taking turns for `--rounds` rounds, the table the median over
rounds: on a machine shared with other work only these ratios mean anything. Prints the CPU's bf16 flags and the
load average.

    python benchmarks/bf16_kernels.py
    python benchmarks/bf16_kernels.py --points 32768 --compiled
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from precision import machine_line

from neurecon_ns.fields.softplus_mlp import softplus_and_slope

BETA = 100.0


def median_seconds(kernel: Callable, inputs: tuple, repeats: int) -> float:
    kernel(*inputs)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        kernel(*inputs)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def torch_softplus_and_slope(pre_activation):
    return F.softplus(pre_activation, BETA), torch.mul(pre_activation, BETA).sigmoid_()


def one_pass_softplus_and_slope(pre_activation):
    exponential = torch.exp(-BETA * pre_activation.abs())
    slope = torch.where(pre_activation >= 0, 1.0 / (1.0 + exponential), exponential / (1.0 + exponential))
    return torch.relu(pre_activation) + torch.log1p(exponential) / BETA, slope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=65536)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compiled", action="store_true", help="also time a torch.compile'd softplus and slope")
    args = parser.parse_args()
    print("start:", machine_line("cpu"), flush=True)

    torch.manual_seed(0)
    tensors = {}
    for dtype in (torch.float32, torch.bfloat16):
        activations = torch.rand(args.points, 256).to(dtype)
        weight = (torch.randn(256, 256) / 16).to(dtype)
        pre_activation = (torch.randn(args.points, 256) * 0.05).to(dtype)  # |beta z| mostly under 20, as at initialisation
        tensors[dtype] = (activations, weight, pre_activation)
    kernels: Dict[str, Callable] = {
        "layer product [N,256]x[256,256]": lambda a, w, z: torch.mm(a, w),
        "weight gradient [256,N]x[N,256]": lambda a, w, z: torch.mm(a.t(), z),
        "slope sigmoid(beta z)": lambda a, w, z: torch.mul(z, BETA).sigmoid_(),
        "element-wise product": lambda a, w, z: a * z,
        "softplus (torch)": lambda a, w, z: F.softplus(z, BETA),
        "softplus and slope: torch's kernels": lambda a, w, z: torch_softplus_and_slope(z),
        "softplus and slope: from the slope": lambda a, w, z: softplus_and_slope(z, BETA),
    }
    if args.compiled:
        compiled = torch.compile(one_pass_softplus_and_slope, dynamic=True)
        kernels["softplus and slope: compiled"] = lambda a, w, z: compiled(z)
    times: Dict[tuple, List[float]] = {}
    for _ in range(args.rounds):
        for name, kernel in kernels.items():
            for dtype, inputs in tensors.items():
                seconds = median_seconds(kernel, inputs, args.repeats)
                times.setdefault((name, dtype), []).append(seconds)

    print("end:", machine_line("cpu"))
    print(f"{'kernel, ' + str(args.points) + ' points':<40}{'fp32 ms':>9}{'bf16 ms':>9}{'fp32/bf16':>11}")
    for name in kernels:
        fp32, bf16 = (statistics.median(times[(name, dtype)]) for dtype in (torch.float32, torch.bfloat16))
        print(f"{name:<40}{fp32 * 1e3:>9.1f}{bf16 * 1e3:>9.1f}{fp32 / bf16:>10.2f}x")


if __name__ == "__main__":
    main()
