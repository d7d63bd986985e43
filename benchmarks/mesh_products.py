"""Costs and quality of the mesh products: decimation of a 1M-face mesh, and a texture bake of a trained run
checked against the photographs.

`simplify`: an analytic bumpy sphere extracted by marching cubes (about 1M faces) decimated to `--target-faces`;
prints the seconds and the distances between the two meshes (Chamfer = mean of both directions' mean
distance, Hausdorff = the larger of both directions' maximum, from `--num-points` points sampled on each
surface to the other's triangles).

`bake --load-config RUN`: the run's surface extracted (`--resolution`), culled by the training views, its small
components removed, decimated to `--target-faces`, then unwrapped and baked at `--texture-size`; prints the
seconds of each stage. Then, for every `--view-stride`-th training view, the textured mesh rendered by
`render.rasterize` (bilinear texture lookup) and the model's own volume render at the same resolution, each
compared with the photograph inside its mask (PSNR).

    python benchmarks/mesh_products.py simplify
    python benchmarks/mesh_products.py bake --load-config outputs/.../config.yml --texture-size 2048
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

from neurecon_ns.mesh.cleanup import remove_small_components, simplify
from neurecon_ns.mesh.extract import extract_level_set


def bumpy_sphere(points: torch.Tensor) -> torch.Tensor:
    """A sphere of radius 0.8 with bumps of amplitude 0.03: curvature everywhere, so decimation has work."""
    bumps = torch.sin(8 * points[..., 0]) * torch.sin(8 * points[..., 1]) * torch.sin(8 * points[..., 2])
    return points.norm(dim=-1) - 0.8 - 0.03 * bumps


def surface_distances(mesh_a: trimesh.Trimesh, mesh_b: trimesh.Trimesh, num_points: int) -> tuple:
    """Chamfer and Hausdorff distances from points sampled on each surface to the other surface's triangles
    (exact point-to-triangle distances, so no sampling floor on the distance itself)."""
    points_a, _ = trimesh.sample.sample_surface(mesh_a, num_points, seed=0)
    points_b, _ = trimesh.sample.sample_surface(mesh_b, num_points, seed=1)
    _, a_to_b, _ = trimesh.proximity.closest_point(mesh_b, points_a)
    _, b_to_a, _ = trimesh.proximity.closest_point(mesh_a, points_b)
    return (a_to_b.mean() + b_to_a.mean()) / 2, max(a_to_b.max(), b_to_a.max())


def run_simplify(args) -> None:
    mesh = extract_level_set(bumpy_sphere, [-1.0] * 3, [1.0] * 3, args.resolution, progress=False)
    started = time.perf_counter()
    simplified, report = simplify(mesh, args.target_faces)
    seconds = time.perf_counter() - started
    chamfer, hausdorff = surface_distances(mesh, simplified, args.num_points)
    print(f"{report.line()} in {seconds:.2f} s ({torch.get_num_threads()} torch threads; the decimation is single-threaded)")
    print(f"Chamfer {chamfer:.5f}, Hausdorff {hausdorff:.5f} (units of a sphere of radius 0.8; voxel {2 / (args.resolution - 1):.5f})")


def psnr_in_mask(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    mse = float(((image[mask] - reference[mask]) ** 2).mean())
    return -10.0 * math.log10(max(mse, 1e-12))


def run_bake(args) -> None:
    from neurecon_ns.mesh.model_mesh import bake_texture, cull_to_training_views, extract_model_surface, training_views
    from neurecon_ns.mesh.texture import export_textured_mesh, sample_texture
    from neurecon_ns.render.rasterize import PinholeCamera, interpolate_vertex_attribute, rasterize
    from neurecon_ns.runs import load_run

    run = load_run(args.load_config, device="cpu")
    model = run.model
    outputs = run.pipeline.datamanager.train_dataparser_outputs
    views = training_views(outputs)
    timings = {}

    started = time.perf_counter()
    mesh = extract_model_surface(model, resolution=args.resolution, progress=False)
    timings["extract"] = time.perf_counter() - started
    started = time.perf_counter()
    mesh = cull_to_training_views(mesh, views)
    mesh, components = remove_small_components(mesh, 0.05)
    mesh, simplified = simplify(mesh, args.target_faces)
    timings["cull + components + simplify"] = time.perf_counter() - started
    print(components.line())
    print(simplified.line())

    started = time.perf_counter()
    textured = bake_texture(model, mesh, args.texture_size, progress=False)
    timings[f"bake {args.texture_size}^2 (unwrap, rasterise, query, fill)"] = time.perf_counter() - started
    if args.output_path is not None:
        export_textured_mesh(textured, args.output_path)
    for stage, seconds in timings.items():
        print(f"{stage}: {seconds:.1f} s")

    texture = torch.as_tensor(np.asarray(textured.visual.material.image.convert("RGB")), dtype=torch.float64) / 255.0
    vertices = torch.as_tensor(np.asarray(textured.vertices), dtype=torch.float64)
    faces = torch.as_tensor(np.asarray(textured.faces))
    uv = torch.as_tensor(np.asarray(textured.visual.uv), dtype=torch.float64)
    masks = views.load_masks()
    mesh_psnrs, volume_psnrs = [], []
    for index in range(0, len(outputs.cameras), args.view_stride):
        camera = PinholeCamera.from_cameras(outputs.cameras, index)
        fragments = rasterize(vertices, faces, camera)
        pixel_uv = interpolate_vertex_attribute(uv, faces, fragments)
        mesh_image = torch.where(fragments.mask[..., None], sample_texture(texture, pixel_uv), 0.0).numpy()
        with Image.open(outputs.image_filenames[index]) as photo:
            photograph = np.asarray(photo.convert("RGB"), dtype=np.float64) / 255.0
        with torch.no_grad():
            rendered = model.get_outputs_for_camera(outputs.cameras[index : index + 1].to(vertices.device))["rgb"]
        volume_image = rendered.double().clamp(0, 1).cpu().numpy()
        mesh_psnrs.append(psnr_in_mask(mesh_image, photograph, masks[index]))
        volume_psnrs.append(psnr_in_mask(volume_image, photograph, masks[index]))
        print(f"view {index}: textured mesh {mesh_psnrs[-1]:.2f} dB, volume render {volume_psnrs[-1]:.2f} dB (inside the mask)")
        if args.save_renders is not None:
            args.save_renders.mkdir(parents=True, exist_ok=True)
            strip = np.concatenate([photograph, volume_image, mesh_image], axis=1)
            Image.fromarray((strip * 255).round().astype(np.uint8)).save(args.save_renders / f"view_{index:03d}.png")
    print(f"mean over {len(mesh_psnrs)} views: textured mesh {np.mean(mesh_psnrs):.2f} dB, volume render {np.mean(volume_psnrs):.2f} dB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    simplify_parser = commands.add_parser("simplify")
    simplify_parser.add_argument("--resolution", type=int, default=408, help="408: about 1.0M faces")
    simplify_parser.add_argument("--target-faces", type=int, default=100_000)
    simplify_parser.add_argument("--num-points", type=int, default=20_000)
    bake_parser = commands.add_parser("bake")
    bake_parser.add_argument("--load-config", type=Path, required=True)
    bake_parser.add_argument("--resolution", type=int, default=512)
    bake_parser.add_argument("--target-faces", type=int, default=100_000)
    bake_parser.add_argument("--texture-size", type=int, default=2048)
    bake_parser.add_argument("--view-stride", type=int, default=8)
    bake_parser.add_argument("--output-path", type=Path, default=None, help="write the textured mesh (.obj/.glb)")
    bake_parser.add_argument("--save-renders", type=Path, default=None, help="folder for photograph | volume | mesh strips")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.command == "simplify":
        run_simplify(args)
    else:
        run_bake(args)


if __name__ == "__main__":
    main()
