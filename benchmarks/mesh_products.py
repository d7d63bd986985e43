"""Costs and quality of the mesh products: decimation of a 1M-face mesh, and a texture bake of a trained run
checked against the photographs.

`simplify`: an analytic bumpy sphere extracted by marching cubes (about 1M faces) decimated to `--target-faces`;
prints the seconds and the distances between the two meshes (Chamfer = mean of both directions' mean
distance, Hausdorff = the larger of both directions' maximum, from `--num-points` points sampled on each
surface to the other's triangles).

`bake --load-config RUN`: the run's surface extracted (`--resolution`), its small components removed, decimated
to `--target-faces`, then unwrapped and baked at `--texture-size` once per `--colours` (averaged over at most
`--max-views` of the training views that see each point, as `neurecon mesh --texture` does; head-on; from the
training camera nearest to head-on); with `--cull-unseen` the same again for the surface first culled by the
training views and masks (as `neurecon mesh --cull-unseen`, masks grown by `--mask-dilation-px`), baked with the
first of `--colours`; prints the seconds of each stage. Then, for every `--view-stride`-th training view, four
images compared with the photograph inside its mask (PSNR): the model's volume render; the mesh rendered by
`render.rasterize` with the radiance network queried at each pixel's surface point along the pixel's ray (the
most a surface colour can give); the same with the network's colour computed as the bake computes it, per pixel
instead of per texel; and the textured mesh (bilinear texture lookup). Volume to along-rays is the cost of the
surface (its shape and holes), along-rays to as-baked the cost of one colour per point, as-baked to texture the
cost of the bake itself.

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


def textured_product(model, mesh, args, label: str, colour: str, views):
    """Small components removed, decimated and baked with the colour `colour` (head-on, nearest, views); prints each
    step and the seconds of each stage."""
    from neurecon_ns.mesh.model_mesh import bake_texture
    from neurecon_ns.mesh.texture import export_textured_mesh

    started = time.perf_counter()
    if args.min_component_fraction > 0:
        mesh, components = remove_small_components(mesh, args.min_component_fraction)
        print(f"[{label}] {components.line()}")
    mesh, simplified = simplify(mesh, args.target_faces)
    print(f"[{label}] {simplified.line()} in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    textured = bake_texture(
        model, mesh, args.texture_size, progress=False,
        camera_centers=views.c2w_opencv[:, :3, 3] if colour == "nearest" else None,
        views=views if colour in ("views", "photos") else None, max_views=args.max_views or None,
        from_photographs=colour == "photos",
    )
    print(f"[{label}] bake {args.texture_size}^2 (unwrap, rasterise, query, fill): {time.perf_counter() - started:.1f} s")
    if args.output_path is not None:
        path = args.output_path
        export_textured_mesh(textured, path.with_name(f"{path.stem}_{label.replace(' ', '_')}{path.suffix}"))
    return textured, mesh, colour


def run_bake(args) -> None:
    from neurecon_ns.mesh.model_mesh import (
        cull_to_training_views,
        extract_model_surface,
        photograph_averaged_colors,
        select_views,
        surface_colors,
        training_views,
        view_averaged_colors,
    )
    from neurecon_ns.mesh.texture import sample_texture
    from neurecon_ns.render.rasterize import PinholeCamera, interpolate_vertex_attribute, rasterize
    from neurecon_ns.runs import load_run

    run = load_run(args.load_config, device="cpu")
    model = run.model
    outputs = run.pipeline.datamanager.train_dataparser_outputs
    views = training_views(outputs)
    camera_centers = views.c2w_opencv[:, :3, 3]

    started = time.perf_counter()
    mesh = extract_model_surface(model, resolution=args.resolution, progress=False)
    print(f"extract at {args.resolution}: {len(mesh.faces):,} faces in {time.perf_counter() - started:.1f} s")
    names = {
        "head-on": "head-on",
        "nearest": "nearest camera",
        "views": f"averaged over <= {args.max_views or 'all'} views",
        "photos": f"photographs averaged over <= {args.max_views or 'all'} views",
    }
    products = {}
    for colour in args.colours:
        products[f"whole, {names[colour]}"] = textured_product(model, mesh, args, f"whole, {names[colour]}", colour, views)
    if args.cull_unseen:
        culled = cull_to_training_views(mesh, views, mask_dilation_px=args.mask_dilation_px)
        label = f"culled {args.mask_dilation_px:g} px, {names[args.colours[0]]}"
        print(f"[{label}] cull unseen: {len(mesh.faces):,} -> {len(culled.faces):,} faces (masks dilated by {args.mask_dilation_px:g} px)")
        products[label] = textured_product(model, culled, args, label, args.colours[0], views)

    masks = views.load_masks()
    columns = {
        "along_rays": "mesh, network colour along the view's rays",
        "baked_view": "mesh, network colour as baked",
        "texture": "textured mesh",
    }
    volume_psnrs = []
    psnrs = {(label, name): [] for label in products for name in columns}
    coverage = {label: [] for label in products}
    for index in range(0, len(outputs.cameras), args.view_stride):
        camera = PinholeCamera.from_cameras(outputs.cameras, index)
        _, ray_directions = camera.pixel_rays()
        with Image.open(outputs.image_filenames[index]) as photo:
            photograph = np.asarray(photo.convert("RGB"), dtype=np.float64) / 255.0
        mask = masks[index]
        with torch.no_grad():
            rendered = model.get_outputs_for_camera(outputs.cameras[index : index + 1])["rgb"]
        volume_image = rendered.double().clamp(0, 1).cpu().numpy()
        volume_psnrs.append(psnr_in_mask(volume_image, photograph, mask))
        print(f"view {index}: volume render {volume_psnrs[-1]:.2f} dB (inside the mask)")
        strip = [photograph, volume_image]
        for label, (textured, baked_mesh, colour) in products.items():
            texture = torch.as_tensor(np.array(textured.visual.material.image.convert("RGB")), dtype=torch.float64) / 255.0
            vertices = torch.as_tensor(np.asarray(textured.vertices), dtype=torch.float64)
            faces = torch.as_tensor(np.asarray(textured.faces))
            uv = torch.as_tensor(np.asarray(textured.visual.uv), dtype=torch.float64)
            fragments = rasterize(vertices, faces, camera)
            covered = fragments.mask.numpy()
            pixel_points = interpolate_vertex_attribute(vertices, faces, fragments).numpy()[covered]
            images = {}
            images["along_rays"] = np.zeros((camera.height, camera.width, 3))
            images["along_rays"][covered] = surface_colors(model, pixel_points, ray_directions[covered])
            images["baked_view"] = np.zeros((camera.height, camera.width, 3))
            if colour in ("views", "photos"):
                # views chosen per face, as the bake does; the atlas keeps the baked mesh's face order
                selection = select_views(
                    baked_mesh, np.asarray(baked_mesh.triangles_center), torch.arange(len(baked_mesh.faces)), views,
                    args.max_views or len(views.intrinsics), neighbourhood_px=1 if colour == "photos" else 0,
                )
                pixel_faces = fragments.face_index[fragments.mask]
                if colour == "views":
                    images["baked_view"][covered] = view_averaged_colors(
                        model, pixel_points, selection, camera_centers, selection_rows=pixel_faces
                    )
                else:
                    images["baked_view"][covered], _ = photograph_averaged_colors(
                        pixel_points, selection, views, pixel_faces, model=model
                    )
            else:
                centers = camera_centers if colour == "nearest" else None
                images["baked_view"][covered] = surface_colors(model, pixel_points, camera_centers=centers)
            pixel_uv = interpolate_vertex_attribute(uv, faces, fragments)
            images["texture"] = torch.where(fragments.mask[..., None], sample_texture(texture, pixel_uv), 0.0).numpy()
            for name, image in images.items():
                psnrs[label, name].append(psnr_in_mask(image, photograph, mask))
            coverage[label].append(covered[mask].mean())
            print(
                f"view {index} [{label}]: " + ", ".join(f"{columns[name]} {psnrs[label, name][-1]:.2f} dB" for name in columns)
                + f" (the mesh covers {100 * coverage[label][-1]:.1f}% of the mask)"
            )
            strip.append(images["texture"])
        if args.save_renders is not None:
            args.save_renders.mkdir(parents=True, exist_ok=True)
            image = (np.concatenate(strip, axis=1) * 255).round().astype(np.uint8)
            Image.fromarray(image).save(args.save_renders / f"view_{index:03d}.png")
    print(f"mean over {len(volume_psnrs)} views, inside the masks: volume render {np.mean(volume_psnrs):.2f} dB")
    for label in products:
        print(
            f"  [{label}] " + ", ".join(f"{columns[name]} {np.mean(psnrs[label, name]):.2f} dB" for name in columns)
            + f" (the mesh covers {100 * np.mean(coverage[label]):.1f}% of the masks)"
        )


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
    bake_parser.add_argument(
        "--colours", nargs="+", choices=("head-on", "nearest", "views", "photos"), default=["head-on", "views"],
        help="the texture colours to bake: head-on, from the camera nearest to head-on, averaged over the views that see the point, the photographs averaged over those views",
    )
    bake_parser.add_argument("--max-views", type=int, default=4, help="views averaged per texel with --colours views or photos; 0: every view that sees it")
    bake_parser.add_argument("--cull-unseen", action="store_true", help="also bake the mesh culled as by `neurecon mesh --cull-unseen`, and compare")
    bake_parser.add_argument("--mask-dilation-px", type=float, default=0.0, help="grows the masks of --cull-unseen")
    bake_parser.add_argument("--min-component-fraction", type=float, default=0.05)
    bake_parser.add_argument("--output-path", type=Path, default=None, help="write the textured meshes (.obj/.glb), the label appended to the name")
    bake_parser.add_argument("--save-renders", type=Path, default=None, help="folder for photograph | volume | textured mesh (whole, culled) strips")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.command == "simplify":
        run_simplify(args)
    else:
        run_bake(args)


if __name__ == "__main__":
    main()
