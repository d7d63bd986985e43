"""Along the rays of a kept run on a synthetic scene: where the rendering puts the surface, where the SDF's zero level
is, and where the exact surface is.

For rays of every 8th view that hit the exact surface and that the model renders opaque (accumulation > 0.99):
- expected depth: `sum_i w_i t_i / sum_i w_i`, the depth the volume rendering gives the photographs' colours;
- zero crossing: the first `f = 0` along the ray near that depth (`find_first_root`), where the mesh is;
- exact hit: the first hit of the scene's analytic SDF (`sphere_trace`).
Printed as medians in pixels at the object (the footprint of one pixel at the mean camera distance), along the ray
(negative: in front of the exact surface), in all and per part of the building (`data/shapes.building_part`).
"expected - zero" near 0 says the rendering itself puts the surface where the mesh is (NeuS's unbiased weights); a
"zero - exact" away from 0 is then the trained geometry's own offset.

    python benchmarks/ray_depths.py --data /tmp/dtu_like --load-config RUN/config.yml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from neurecon_ns.data.shapes import BUILDING_PARTS, Shape, building_part, get_shape
from neurecon_ns.data.synthetic import sphere_trace
from neurecon_ns.errors import UserInputError
from neurecon_ns.model_components.root_finding import find_first_root
from neurecon_ns.runs import load_run

SEARCH_HALF_WIDTH = 0.05
"""The zero crossing is looked for within this distance (unit-sphere units) of the expected depth."""


def ray_depths(model, shape: Shape, cameras, views, rays_per_view: int, seed: int = 0):
    """Per ray: the three depths (expected, zero crossing, exact hit of `shape`) and the exact hit point, for the
    rays kept."""
    generator = torch.Generator().manual_seed(seed)
    kept = {"expected": [], "zero": [], "exact": [], "points": []}
    for view in views:
        bundle = cameras.generate_rays(camera_indices=view).flatten()
        rays = bundle[torch.randperm(len(bundle), generator=generator)[:rays_per_view]]
        with torch.no_grad():
            outputs = model(rays)
            accumulation = outputs["accumulation"].squeeze(-1)
            expected = outputs["depth"].squeeze(-1) / accumulation.clamp(min=1e-6)
            zero, found = find_first_root(
                model.level_set,
                rays.origins,
                rays.directions,
                (expected - SEARCH_HALF_WIDTH)[:, None],
                (expected + SEARCH_HALF_WIDTH)[:, None],
                num_steps=101,
                num_secant_steps=8,
            )
        origins, directions = rays.origins.double().numpy(), rays.directions.double().numpy()
        exact, hit = sphere_trace(shape, origins, directions)
        keep = hit & found.squeeze(-1).numpy() & (accumulation.numpy() > 0.99)
        kept["expected"].append(expected.numpy()[keep])
        kept["zero"].append(zero.squeeze(-1).numpy()[keep])
        kept["exact"].append(exact[keep])
        kept["points"].append((origins + exact[:, None] * directions)[keep])
    return {name: np.concatenate(values) for name, values in kept.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the synthetic scene the run was trained on (scene.json)")
    parser.add_argument("--load-config", type=Path, required=True, help="config.yml of the kept run")
    parser.add_argument("--rays-per-view", type=int, default=6000)
    parser.add_argument("--every", type=int, default=8, help="every k-th view (0, k, 2k, ...)")
    args = parser.parse_args()
    scene_file = args.data / "scene.json"
    if not scene_file.is_file():
        raise SystemExit(f"error: {scene_file}: not found; give a scene written by `neurecon synth` with --data.")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from real_scan import all_views, pixel_at_object

    try:
        shape = get_shape(json.loads(scene_file.read_text())["shape"])
        run = load_run(args.load_config, device="cpu")
    except UserInputError as error:
        raise SystemExit(f"error: {error}") from None
    model = run.model
    model.eval()
    cameras = all_views(args.data).cameras
    pixel = pixel_at_object(cameras)
    depths = ray_depths(model, shape, cameras, range(0, len(cameras), args.every), args.rays_per_view)
    expected_minus_zero = (depths["expected"] - depths["zero"]) / pixel
    zero_minus_exact = (depths["zero"] - depths["exact"]) / pixel
    expected_minus_exact = (depths["expected"] - depths["exact"]) / pixel
    print(f"{len(expected_minus_zero)} rays; medians in pixels at the object along the ray (negative: nearer the camera)")
    print("| part | rays | expected - zero | zero - exact | expected - exact |")
    print("|---|---:|---:|---:|---:|")
    parts = building_part(depths["points"]) if shape.name == "building" else np.full(len(zero_minus_exact), "all")
    rows = [("all", np.ones(len(parts), dtype=bool))] + [(name, parts == name) for name in BUILDING_PARTS]
    for name, chosen in rows:
        if chosen.sum() < 100:
            continue
        print(
            f"| {name} | {chosen.sum()} | {np.median(expected_minus_zero[chosen]):+.2f} | {np.median(zero_minus_exact[chosen]):+.2f} "
            f"| {np.median(expected_minus_exact[chosen]):+.2f} |"
        )


if __name__ == "__main__":
    main()
