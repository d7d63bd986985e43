"""Row alignment of a product's result: `aligned_mm` against a plain `addmm`, on this machine's BLAS.

The paper network's layer before its skip is 217 wide (256 minus the 39 encoding columns). `aligned_mm`
writes such a product into rows that start 16 floats apart (a view of a 224-wide matrix). Both are timed on
the same inputs, alternating, the median of `--repeats` each; a 256-wide product is timed for scale.

    python benchmarks/aligned_products.py
    python benchmarks/aligned_products.py --points 65536 --width 217 --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from neurecon_ns.fields.softplus_mlp import aligned_mm


def milliseconds(function, repeats: int) -> list:
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=65536)
    parser.add_argument("--width", type=int, default=217)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    inputs = torch.randn(args.points, 256)
    weight, bias = torch.randn(256, args.width), torch.randn(args.width)
    square_weight, square_bias = torch.randn(256, 256), torch.randn(256)
    plain, aligned, square = [], [], []
    for _ in range(args.repeats):  # alternating, so that a slower minute of a shared machine hits both
        plain += milliseconds(lambda: torch.addmm(bias, inputs, weight), 1)
        aligned += milliseconds(lambda: aligned_mm(inputs, weight, bias), 1)
        square += milliseconds(lambda: torch.addmm(square_bias, inputs, square_weight), 1)
    plain_ms, aligned_ms, square_ms = (statistics.median(times) for times in (plain, aligned, square))
    print(f"threads {torch.get_num_threads()}, [{args.points} x 256] x [256 x {args.width}], median of {args.repeats}")
    print(f"{'plain addmm':>16} {plain_ms:8.1f} ms")
    print(f"{'aligned_mm':>16} {aligned_ms:8.1f} ms   {aligned_ms / plain_ms:.2f} of plain")
    print(f"{'256 wide':>16} {square_ms:8.1f} ms")


if __name__ == "__main__":
    main()
