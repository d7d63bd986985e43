"""Does a trained hash-grid SDF bend at its grid's cell faces? The normal's turning rate across each level's faces
against elsewhere on the surface.

The surface is found along rays from the centre of the unit sphere, on a 300 x 600 grid of directions (polar and
azimuth angles): each ray's outermost sign change of the SDF, by 400 steps inward from the sphere and 30 bisections.
Neighbouring directions along the azimuth give pairs of surface points; for each pair, the angle between the
SDF's normals at its two points over the distance between them is the normal's turning rate (degrees per unit).
For each grid level the pairs are split into those whose segment crosses one of the level's cell faces and the
rest, and the script prints the mean rate of each and their ratio. A surface whose grid leaves flat facets
joined at creases along a level's faces turns its normal faster across them (ratio above 1); a surface the grid
does not shape gives about 1 at every level. Segments cross many fine faces, so the fine levels' ratios mix
pairs of both kinds; the coarse levels' are the telling ones.

    python benchmarks/grid_facets.py --load-config RUN/config.yml

Reads a run of a hash-grid method (`real_scan.py --save-run` keeps one).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch


def outermost_crossings(level_value, directions: torch.Tensor, num_steps: int = 400, num_bisections: int = 30):
    """Radius of each direction's outermost sign change of `level_value` (outside positive) in (0.02, 1], and
    whether there is one."""
    radii = torch.linspace(1.0, 0.02, num_steps)
    inside = torch.stack([level_value(directions * radius) < 0 for radius in radii], dim=1)
    first_inside = inside.float().argmax(dim=1)
    found = inside.any(dim=1) & (first_inside > 0)
    outer = radii[(first_inside - 1).clamp(min=0)]
    inner = radii[first_inside]
    for _ in range(num_bisections):
        middle = (outer + inner) / 2
        is_outside = level_value(directions * middle[:, None]) > 0
        outer = torch.where(is_outside, middle, outer)
        inner = torch.where(is_outside, inner, middle)
    return (outer + inner) / 2, found


def turning_by_level(points: np.ndarray, normals: np.ndarray, valid: np.ndarray, cell_sizes, bound: float):
    """Per level `(share of pairs crossing a face, mean rate crossing, mean rate not crossing)` over the pairs of
    neighbours along the grid of directions' last axis, both valid and less than 0.02 apart."""
    next_points, next_normals = np.roll(points, -1, axis=1), np.roll(normals, -1, axis=1)
    lengths = np.linalg.norm(next_points - points, axis=-1)
    pairs = valid & np.roll(valid, -1, axis=1) & (lengths < 0.02) & (lengths > 0)
    cosines = np.clip((normals * next_normals).sum(axis=-1), -1.0, 1.0)
    rates = np.degrees(np.arccos(cosines))[pairs] / lengths[pairs]
    rows = []
    for cell in cell_sizes:
        ratios = []
        for shift in (0.0, 0.5):  # the level's faces, and planes halfway between them
            start, end = ((p[pairs] + bound) / cell + shift for p in (points, next_points))
            crosses = (np.floor(start) != np.floor(end)).any(axis=-1)
            ratios.append((crosses.mean(), rates[crosses].mean(), rates[~crosses].mean()))
        rows.append(ratios)
    return rows, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-config", type=Path, required=True, help="config.yml of a hash-grid run")
    parser.add_argument("--polar", type=int, default=300, help="polar angles of the grid of directions")
    parser.add_argument("--azimuth", type=int, default=600, help="azimuth angles of the grid of directions")
    args = parser.parse_args()

    from neurecon_ns.runs import load_run

    torch.set_grad_enabled(False)
    run = load_run(args.load_config, device="cpu")
    field = run.model.field
    encoding = field.geometry_network.encoding
    grid = encoding.config
    resolutions = [encoding.level_resolution(level) for level in range(grid.num_levels)]

    polar = np.linspace(0.05, math.pi - 0.05, args.polar)
    azimuth = np.linspace(0.0, 2.0 * math.pi, args.azimuth, endpoint=False)
    polar, azimuth = np.meshgrid(polar, azimuth, indexing="ij")
    unit = np.stack([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)], axis=-1)
    directions = torch.tensor(unit.reshape(-1, 3), dtype=torch.float32)

    def level_value(points):
        return torch.cat([field.get_level_value(chunk) for chunk in points.split(65536)])[..., 0]

    radius, found = outermost_crossings(level_value, directions)
    surface = directions * radius[:, None]
    with torch.enable_grad():
        _, _, gradient = field.get_level_value_and_gradient(surface, create_graph=False)
    normals = torch.nn.functional.normalize(gradient, dim=-1).numpy().reshape(*unit.shape)
    cell_sizes = [2.0 * grid.bound / resolution for resolution in resolutions]
    rows, rates = turning_by_level(surface.numpy().reshape(*unit.shape), normals, found.numpy().reshape(unit.shape[:2]), cell_sizes, grid.bound)

    print(f"run: {args.load_config}; {len(rates)} pairs of surface points, median turning {np.median(rates):.0f} deg/unit")
    print("| level | cells | cell size | pairs crossing a face | mean rate crossing (deg/unit) | not crossing | ratio | ratio at the mid-planes |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for level, (resolution, cell, (faces, midway)) in enumerate(zip(resolutions, cell_sizes, rows)):
        share, crossing, other = faces
        print(f"| {level} | {resolution} | {cell:.4f} | {share:.3f} | {crossing:.0f} | {other:.0f} | {crossing / other:.2f} | {midway[1] / midway[2]:.2f} |")


if __name__ == "__main__":
    main()
