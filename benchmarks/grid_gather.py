"""Time of the torch hash grid's features, Jacobian and backward pass, against an indexed gather under autograd.

The plugin's grid (`MultiResolutionGrid`) reads each cell's 8 corner rows with one `embedding_bag` per weight
set (the trilinear weights, and their derivatives along x, y and z), from corner-major weights and rows, and
scatters the backward pass itself (`InterpolateCorners`). The baseline, measured in the same run on the same
table and points, is the direct way: the corner rows gathered by index into `[N, L, 8, F]`, multiplied by
point-major weights `[N, L, 8]` and summed, autograd for the backward.

Three operations, at `--points` points spread over a sphere's shell (as ray samples near a surface are), every
level active: a query outside autograd (what the samplers, rendering and meshing run), the features and their
Jacobian (the closed-form SDF gradient's part), and both with the backward pass of a loss on them (a training
step's part). Grids: the CPU size (8 levels to 256 cells, tables of 2^18) and the finer one README shows for
building-like captures (512 cells, 2^19). Median of `--repeats` after one warm-up; ratio = baseline / plugin.

    python benchmarks/grid_gather.py
    OMP_NUM_THREADS=1 python benchmarks/grid_gather.py --points 65536
"""

from __future__ import annotations

import argparse
import statistics

import torch
from aligned_products import milliseconds  # this folder is on sys.path when a script here runs

from neurecon_ns.fields.hash_encoding import HASH_PRIMES, HashGridConfig, MultiResolutionGrid, ProgressiveHashEncoding

GRIDS = {"256 cells, 2^18 (CPU size)": (256, 18), "512 cells, 2^19": (512, 19)}


def indexed_gather(grid: MultiResolutionGrid, unit_points: torch.Tensor, with_jacobian: bool = True):
    """The baseline, all point-major: corner rows `[N, L, 8]` and weights `[N, L, 8]`, the corner features
    gathered by index `[N, L, 8, F]`, autograd for the backward."""
    scaled = unit_points[:, None, :] * grid.resolutions[:, None]  # [N, L, 3]
    lowest = torch.floor(scaled).clamp(max=grid.resolutions[:, None] - 1)
    fraction = scaled - lowest
    vertex = lowest.long()
    # rows from per-axis terms, as the plugin's grid builds them, laid out [N, L, 8]
    num_dense = grid.num_dense
    stride = grid.strides[:num_dense]
    dense = vertex[:, :num_dense]
    dense_rows = ((dense[..., 0] * stride + dense[..., 1]) * stride + dense[..., 2])[..., None] + grid.dense_corner_rows[:, :num_dense].T
    hashed = vertex[:, num_dense:]
    terms = [torch.stack([hashed[..., axis], hashed[..., axis] + 1], dim=-1) * prime for axis, prime in enumerate(HASH_PRIMES)]
    hashed_rows = (terms[0][..., :, None, None] ^ terms[1][..., None, :, None] ^ terms[2][..., None, None, :]).flatten(-3)
    hashed_rows = (hashed_rows & (grid.table_size - 1)) + grid.level_offsets[num_dense:, None]
    rows = torch.cat([dense_rows, hashed_rows], dim=1)
    pairs = torch.stack([1.0 - fraction, fraction], dim=-1)  # [N, L, 3, 2]

    def products(x, y, z):
        return (x[..., :, None, None] * y[..., None, :, None] * z[..., None, None, :]).flatten(-3)

    x, y, z = pairs.unbind(dim=-2)
    corner_features = grid.table[rows]  # [N, L, 8, F]
    features = (corner_features * products(x, y, z)[..., None]).sum(dim=2).flatten(1)
    if not with_jacobian:
        return features, None
    slope = torch.tensor([-1.0, 1.0]).expand_as(x) * grid.resolutions[:, None]
    slopes = torch.stack([products(slope, y, z), products(x, slope, z), products(x, y, slope)], dim=-1)  # [N, L, 8, 3]
    jacobian = torch.einsum("nlcf,nlca->nlfa", corner_features, slopes).flatten(1, 2)
    return features, jacobian


def shell_points(count: int, seed: int = 0) -> torch.Tensor:
    """Unit-cube points within 0.05 of a sphere of radius 0.3 about the cube's centre."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=-1)
    radii = 0.3 + 0.05 * (torch.rand(count, 1, generator=generator) * 2 - 1)
    return 0.5 + directions * radii


def median_ms(run, repeats: int) -> float:
    """Median of `repeats` timed calls, after one warm-up call."""
    return statistics.median(milliseconds(run, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=32768, help="points per call (512 rays x 64 samples)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"{args.points} points, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| grid | operation | indexed gather (ms) | plugin (ms) | ratio |")
    print("|---|---|---:|---:|---:|")
    points = shell_points(args.points)
    for name, (max_resolution, log2_size) in GRIDS.items():
        config = HashGridConfig(num_levels=8, max_resolution=max_resolution, log2_hashmap_size=log2_size, implementation="torch")
        for operation, baseline_ms, plugin_ms in measure(ProgressiveHashEncoding(config).grids, points, args.repeats):
            print(f"| {name} | {operation} | {baseline_ms:.1f} | {plugin_ms:.1f} | {baseline_ms / plugin_ms:.2f} |")


def measure(grid: MultiResolutionGrid, points: torch.Tensor, repeats: int):
    """(operation, baseline ms, plugin ms) for the three operations on `grid`."""
    torch.nn.init.uniform_(grid.table, -1.0, 1.0)
    with torch.no_grad():  # the two compute the same features and Jacobian
        expected, got = indexed_gather(grid, points[:1000]), grid.forward_with_jacobian(points[:1000])
        assert torch.allclose(expected[0], got[0], atol=1e-5) and torch.allclose(expected[1], got[1], rtol=1e-4, atol=1e-3)
    loss_weights = torch.randn(points.shape[0], grid.table.shape[1] * grid.resolutions.shape[0], 4)

    def plugin(unit_points, with_jacobian=True):
        return grid.forward_with_jacobian(unit_points, with_jacobian)

    def baseline(unit_points, with_jacobian=True):
        return indexed_gather(grid, unit_points, with_jacobian)

    def query(implementation):
        def run():
            with torch.no_grad():
                implementation(points, with_jacobian=False)

        return run

    def training(implementation):
        def run():
            grid.table.grad = None
            features, jacobian = implementation(points)
            ((features * loss_weights[..., 0]).sum() + (jacobian * loss_weights[..., 1:]).sum()).backward()

        return run

    operations = {
        "query (no autograd)": query,
        "features + Jacobian": lambda implementation: lambda: implementation(points),
        "features + Jacobian + backward": training,
    }
    for operation, make in operations.items():
        yield operation, median_ms(make(baseline), repeats), median_ms(make(plugin), repeats)


if __name__ == "__main__":
    main()
