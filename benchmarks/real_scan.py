"""Real-scan benchmark: a method trained at its CPU size on a capture in the NeuS layout, measured against the
photographs and masks.

The capture (default: the shared DTU scan 65 at 400x300, `../shared/data/dtu_scan65_400x300`) is split as
`neus-data --eval-mode interval` splits it: every 8th view (0, 8, 16, ...) is held out of training. The method
is shrunk for the CPU by `training.small_cpu_config` (the schedules fitted to `--steps`) and trained with
nerfstudio's own iteration for `--steps` or `--minutes`, whichever ends first; `--set NAME=VALUE` changes model
settings by dotted name (`networks.gradient=numerical`, `mask_loss_weight=0.5`), `trainer.NAME=VALUE` the
trainer's. Then the surface is extracted (coarse-to-fine marching cubes, `--mesh-resolution` over the model's
sphere), its largest connected component kept and mapped to the data's units, and the table row reports:

- mean and minimum silhouette IoU: the mesh rasterised from every camera, held-out ones included, against that
  view's mask (`mesh/capture_metrics.silhouette_ious`);
- PSNR inside the mask on the held-out views: the model's volume render against the photograph, over pixels
  inside the mask (the object; what lies outside the mask the model is not asked to explain), `--psnr-pixels`
  of them per view drawn at random, the same for every run;
- surface noise in degrees (`mesh/capture_metrics.surface_noise`): the median over vertices of the angle
  between the mesh's vertex normal and the normal of a plane fitted to the mesh within 2.5% of the object's
  size around it. A wavy or wrinkled wall raises it, a smooth or flat one keeps it near zero, and sharp edges,
  being few vertices, hardly move the median;
- seconds of training (the iterations alone) and seconds per step;
- on a synthetic scene (`neurecon synth`, which writes scene.json and the exact surface gt_mesh_unit.ply):
  the Chamfer distance to the exact surface, in the data's units and in pixels at the object (the footprint of
  one pixel at the mean camera distance), between the parts of the two surfaces that some camera sees
  (`mesh/capture_metrics.seen_part`; a DTU-like layout never sees the object's underside), each side's 100k
  points measured to the other side's triangles (`surface_distances`; also, as `chamfer_to_samples_pixels`, to
  the other side's 100k points, which adds their spacing), and where the error lies: the seen mesh's signed
  offsets from the exact surface along its normal (`signed_offsets`; positive proud of it, negative inside),
  their median and 10th and 90th percentiles in pixels; on the building, the same part by part of its surface
  (roof slopes, walls, windows, gable, chimney: `data/shapes.building_part`), each part's share of the Chamfer
  (the shares add up to it), printed as a table and kept in the JSON under "parts".

It writes a picture of three held-out views: the photograph, the mesh shaded from that camera, and the mesh's
normals as colours, side by side, and on a synthetic scene the mesh coloured by its signed offsets (white on
the exact surface, red 3 px or more proud of it, blue 3 px or more inside; `--images-dir`,
`real_scan_<label>.jpg`), and the numbers as JSON beside it.
`--exact-surface --filled-recesses` measures, on the building (`neurecon synth --preset dtu`), its exact surface
with the window and door recesses filled (the walls flat across them) against the exact surface: what a surface
that does not carve the windows reads at best.
`--save-run DIR` keeps the run (config.yml and the last checkpoint, as ns-train writes them) for `neurecon mesh`,
`ns-viewer` or `--load-config`, which measures a kept run again without training. `--exact-surface` measures a
synthetic scene's exact surface in place of a model: the floor of the IoU and noise columns. `docs/benchmarks.md`
keeps results.

    python benchmarks/real_scan.py --label before --images-dir docs/images --save-run /tmp/real_scan_runs/before
    python benchmarks/real_scan.py --steps 300 --label smoke
    python benchmarks/real_scan.py --label numerical --set networks.gradient=numerical
    python benchmarks/real_scan.py --data /tmp/dtu_like --label synthetic      # a scene from `neurecon synth --preset dtu`
    python benchmarks/real_scan.py --data /tmp/dtu_like --exact-surface --label exact
    python benchmarks/real_scan.py --data /tmp/dtu_like --exact-surface --filled-recesses --label filled
    python benchmarks/real_scan.py --load-config /tmp/real_scan_runs/before/.../config.yml --label before
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import trimesh
from PIL import Image

from neurecon_ns.data.neus_dataparser import NeusDataParserConfig, split_indices
from neurecon_ns.data.shapes import BUILDING_PARTS, building_part
from neurecon_ns.errors import UserInputError
from neurecon_ns.mesh.capture_metrics import noise_radius, seen_part, signed_offsets, silhouette_ious, surface_noise
from neurecon_ns.mesh.evaluate import compare_point_sets, report_from_distances, sample_surface, surface_distances
from neurecon_ns.mesh.model_mesh import extract_model_surface
from neurecon_ns.mesh.postprocess import keep_largest_component, transform_mesh
from neurecon_ns.render.rasterize import MeshRenderer, PinholeCamera
from neurecon_ns.runs import unit_to_data_matrix

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("../shared/data/dtu_scan65_400x300")
TRAINING_RECORD = "real_scan_training.json"
"""Written into a kept run's directory: steps and seconds of training, which `--load-config` reports."""


def resolve_data(path: Path) -> Path:
    """`path` as given, or relative to the repository (the shared data sits beside the repository)."""
    for candidate in (Path(path), REPO / path):
        if candidate.is_dir():
            return candidate.resolve()
    raise UserInputError(f"{path}: capture not found (also looked in {REPO / path}); pass a scene in the NeuS layout with --data.")


def pixel_at_object(cameras) -> float:
    """The footprint of one pixel at the mean camera distance from the centre, in unit-sphere units."""
    return float(cameras.camera_to_worlds[:, :3, 3].norm(dim=-1).mean() / cameras.fx.mean())


def all_views(data: Path):
    """Every view of the capture (cameras in the unit-sphere space, masks required) as nerfstudio's parser gives it."""
    parser = NeusDataParserConfig(data=data, eval_mode="all", masks="on").setup()
    return parser.get_dataparser_outputs("train")


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 127


def held_out_psnr(
    model, cameras, indices: Sequence[int], images: List[np.ndarray], masks: List[np.ndarray], max_pixels: int, seed: int = 0
) -> List[float]:
    """Per held-out view: PSNR of the model's volume render against the photograph over the pixels inside the mask,
    at most `max_pixels` of them drawn at random (the same ones for every run: a CPU renders about a thousand rays
    a second, and 8192 pixels give the mean squared error to about 2%)."""
    values = []
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    try:
        for index in indices:
            rows, columns = np.nonzero(masks[index])
            if len(rows) > max_pixels:
                chosen = np.sort(rng.choice(len(rows), max_pixels, replace=False))
                rows, columns = rows[chosen], columns[chosen]
            view_rays = cameras.generate_rays(camera_indices=int(index))
            rays = view_rays[torch.from_numpy(rows), torch.from_numpy(columns)]
            rays = rays.reshape((len(rows), 1))
            rgb = model.get_outputs_for_camera_ray_bundle(rays)["rgb"].reshape(-1, 3).clamp(0.0, 1.0)
            target = torch.from_numpy(images[index][rows, columns])
            mse = float(((rgb.float() - target) ** 2).mean())
            values.append(-10.0 * np.log10(max(mse, 1e-10)))
    finally:
        model.train(was_training)
    return values


OFFSET_COLOUR_RANGE_PX = 3.0
"""The error column's colours saturate at this many pixels inside (blue) or proud (red) of the exact surface."""


def offset_colours(offsets_px: np.ndarray) -> np.ndarray:
    """Diverging colours of signed offsets: white on the surface, red proud of it, blue inside it."""
    t = np.clip(offsets_px / OFFSET_COLOUR_RANGE_PX, -1.0, 1.0)[:, None]
    red, blue, white = np.array([0.85, 0.1, 0.1]), np.array([0.1, 0.25, 0.85]), np.ones(3)
    return np.where(t > 0, white + t * (red - white), white - t * (blue - white))


def view_picture(
    mesh_unit: trimesh.Trimesh,
    cameras: Sequence[PinholeCamera],
    photographs: Sequence[np.ndarray],
    vertex_offsets_px: Optional[np.ndarray] = None,
) -> Image.Image:
    """One row per view: photograph, shaded mesh, mesh normals ((n + 1) / 2, world axes of the training space)
    and, given the vertices' signed offsets from an exact surface, the mesh coloured by them."""
    renderer = MeshRenderer(mesh_unit)
    offsets_renderer = None
    if vertex_offsets_px is not None:
        coloured = trimesh.Trimesh(mesh_unit.vertices, mesh_unit.faces, vertex_colors=offset_colours(vertex_offsets_px), process=False)
        offsets_renderer = MeshRenderer(coloured)
    rows = []
    for camera, photograph in zip(cameras, photographs):
        shaded = renderer.render(camera, "shaded", background=1.0).numpy()
        normals = renderer.render(camera, "normal", background=1.0).numpy()
        columns = [photograph, shaded, normals]
        if offsets_renderer is not None:
            columns.append(offsets_renderer.render(camera, "vertex", background=1.0).numpy())
        rows.append(np.concatenate(columns, axis=1))
    pixels = np.round(np.clip(np.concatenate(rows, axis=0), 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(pixels)


def exact_surface(data: Path) -> Optional[trimesh.Trimesh]:
    """The exact surface of a synthetic scene (unit-sphere space), if the capture is one."""
    path = data / "gt_mesh_unit.ply"
    if not (data / "scene.json").is_file() or not path.is_file():
        return None
    return trimesh.load(path, force="mesh")


def filled_recesses_surface(data: Path) -> trimesh.Trimesh:
    """The building scene's exact surface with its recesses filled, meshed as `neurecon synth` meshed the scene."""
    from neurecon_ns.data.shapes import building, surface_mesh

    shape = scene_shape(data)
    if shape != "building":
        raise UserInputError(
            f"{data / 'scene.json'}: --filled-recesses needs the building (shape '{shape}' here); "
            "write one with `neurecon synth --preset dtu`."
        )
    return surface_mesh(building(recesses=()), int(json.loads((data / "scene.json").read_text()).get("mesh_resolution", 384)))


def scene_shape(data: Path) -> Optional[str]:
    """The shape a synthetic scene was written with (None for a real capture)."""
    scene = data / "scene.json"
    return json.loads(scene.read_text()).get("shape") if scene.is_file() else None


def parts_breakdown(
    mesh_parts: np.ndarray, reference_parts: np.ndarray, to_reference_px: np.ndarray, to_mesh_px: np.ndarray, offsets_px: np.ndarray
) -> Dict[str, Dict[str, float]]:
    """Where the Chamfer comes from, part by part of the exact surface: each part's share of the seen exact surface,
    its share of the Chamfer (the parts' shares add up to the Chamfer), the completeness on it, and the signed offsets
    of the mesh points whose nearest exact point lies on it (negative: inside)."""
    parts = {}
    for name in BUILDING_PARTS:
        on_mesh, on_reference = mesh_parts == name, reference_parts == name
        if not on_reference.any():
            continue
        offsets = offsets_px[on_mesh] if on_mesh.any() else np.full(1, np.nan)
        parts[name] = {
            "area_share": float(on_reference.mean()),
            "chamfer_share_pixels": float((to_reference_px[on_mesh].sum() / len(to_reference_px) + to_mesh_px[on_reference].sum() / len(to_mesh_px)) / 2),
            "completeness_pixels": float(to_mesh_px[on_reference].mean()),
            "offset_p10_pixels": float(np.percentile(offsets, 10)),
            "offset_median_pixels": float(np.median(offsets)),
            "offset_p90_pixels": float(np.percentile(offsets, 90)),
        }
    return parts


def parts_table(parts: Dict[str, Dict[str, float]]) -> str:
    lines = ["| part | share of the surface | share of the Chamfer (px) | completeness (px) | offsets p10 / median / p90 (px) |", "|---|---:|---:|---:|---|"]
    for name, part in parts.items():
        lines.append(
            f"| {name} | {part['area_share']:.3f} | {part['chamfer_share_pixels']:.3f} | {part['completeness_pixels']:.2f} "
            f"| {part['offset_p10_pixels']:+.2f} / {part['offset_median_pixels']:+.2f} / {part['offset_p90_pixels']:+.2f} |"
        )
    return "\n".join(lines)


def train(args, data: Path):
    """Train at the CPU size with every `holdout`-th view held out; returns (trainer, steps, seconds)."""
    from neurecon_ns.training import apply_model_settings, method_config, run_iteration, setup_trainer, small_cpu_config

    output_dir = Path(args.save_run) if args.save_run else Path(tempfile.mkdtemp(prefix="neurecon_real_scan_"))
    sizes = {} if args.rays is None else {"rays_per_batch": args.rays}
    config = small_cpu_config(method_config(args.method), data, output_dir, args.steps, seed=args.seed, **sizes)
    parser = config.pipeline.datamanager.dataparser
    if not isinstance(parser, NeusDataParserConfig):
        raise UserInputError(f"method '{args.method}' does not read the NeuS layout (its data parser is {type(parser).__name__}); choose a neus-data method.")
    parser.eval_mode, parser.eval_interval = "interval", args.holdout_every
    config.experiment_name = f"real_scan_{args.label}"
    apply_model_settings(config, args.set)
    trainer = setup_trainer(config)
    budget = args.minutes * 60.0 if args.minutes else float("inf")
    train_seconds, step = 0.0, 0
    report_every = max(args.steps // 10, 1)
    while step < args.steps and train_seconds < budget:
        started = time.perf_counter()
        run_iteration(trainer, step)
        train_seconds += time.perf_counter() - started
        step += 1
        if step % report_every == 0:
            print(f"  step {step}: {train_seconds:.0f} s of training, loss {trainer.latest_loss:.4f}", flush=True)
    if args.save_run:
        trainer.save_checkpoint(step - 1)
        record = {"steps": step, "train_seconds": train_seconds, "settings": list(args.set), "method": args.method}
        (config.get_base_dir() / TRAINING_RECORD).write_text(json.dumps(record, indent=2))
        print(f"run kept: {config.get_base_dir() / 'config.yml'}")
    return trainer.pipeline.model, step, train_seconds


def load(config_path: Path):
    """A kept run's model and its recorded steps and seconds of training."""
    from neurecon_ns.runs import load_run

    run = load_run(config_path, device="cpu")
    record_path = Path(config_path).parent / TRAINING_RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"steps": run.step + 1, "train_seconds": float("nan")}
    return run.model, int(record["steps"]), float(record["train_seconds"])


def evaluate(model, data: Path, args) -> Dict[str, float]:
    """The numbers of the table row, and the picture."""
    views = all_views(data)
    cameras = views.cameras
    num_views = len(cameras)
    held_out = split_indices(num_views, "test", "interval", args.holdout_every)
    unit_to_data = unit_to_data_matrix(views.dataparser_transform, views.dataparser_scale)
    images = [read_rgb(path) for path in views.image_filenames]
    masks = [read_mask(path) for path in views.metadata["fg_mask_filenames"]]
    pinholes = [PinholeCamera.from_cameras(cameras, index) for index in range(num_views)]

    started = time.perf_counter()
    reference = exact_surface(data)
    if model is None:  # the exact surface itself: the floor of each column
        if reference is None:
            raise UserInputError(f"{data}: --exact-surface needs a synthetic scene (scene.json and gt_mesh_unit.ply).")
        mesh_unit = filled_recesses_surface(data) if args.filled_recesses else reference
    else:
        mesh_unit = keep_largest_component(extract_model_surface(model, resolution=args.mesh_resolution))
    mesh_data = transform_mesh(mesh_unit, unit_to_data)
    ious = silhouette_ious(mesh_unit, pinholes, masks)
    psnrs = [float("nan")] if model is None else held_out_psnr(model, cameras, held_out, images, masks, args.psnr_pixels)
    results: Dict[str, float] = {
        "mean_iou": float(ious.mean()),
        "min_iou": float(ious.min()),
        "min_iou_view": int(ious.argmin()),
        "held_out_psnr_masked": float(np.mean(psnrs)),
        "surface_noise_deg": surface_noise(mesh_data),
        "noise_radius_data_units": noise_radius(mesh_data),
        "num_faces": int(len(mesh_unit.faces)),
    }
    pixel_unit = pixel_at_object(cameras)
    data_per_unit = float(abs(np.linalg.det(unit_to_data[:3, :3])) ** (1.0 / 3.0))
    results["pixel_at_object_data_units"] = pixel_unit * data_per_unit
    vertex_offsets_px = None
    if reference is not None and mesh_unit is not reference:  # a model's surface, or the filled building
        seen_mesh, seen_reference = seen_part(mesh_unit, pinholes), seen_part(reference, pinholes)
        # each side's points to the other side's triangles: a sample-to-sample distance would add its spacing
        # (0.4 px at 100k points on the building) to every row
        mesh_points, reference_points = sample_surface(seen_mesh, 100_000, seed=0)[0], sample_surface(seen_reference, 100_000, seed=1)[0]
        to_reference, reference_faces = surface_distances(mesh_points, seen_reference)
        to_mesh, _ = surface_distances(reference_points, seen_mesh)
        report = report_from_distances(to_reference, to_mesh)
        results["chamfer_data_units"] = report.chamfer * data_per_unit
        results["chamfer_pixels"] = report.chamfer / pixel_unit
        results["accuracy_pixels"] = report.accuracy / pixel_unit
        results["completeness_pixels"] = report.completeness / pixel_unit
        results["chamfer_to_samples_pixels"] = compare_point_sets(mesh_points, reference_points).chamfer / pixel_unit
        offsets_px = signed_offsets(mesh_points, seen_reference) / pixel_unit
        for name, percentile in (("p10", 10), ("median", 50), ("p90", 90)):
            results[f"offset_{name}_pixels"] = float(np.percentile(offsets_px, percentile))
        results["exact_surface_noise_deg"] = surface_noise(transform_mesh(reference, unit_to_data))
        if scene_shape(data) == "building":
            mesh_parts = building_part(seen_reference.triangles_center[reference_faces])
            results["parts"] = parts_breakdown(
                mesh_parts, building_part(reference_points), to_reference / pixel_unit, to_mesh / pixel_unit, offsets_px
            )
        vertex_offsets_px = signed_offsets(np.asarray(mesh_unit.vertices), reference) / pixel_unit
    results["evaluation_seconds"] = time.perf_counter() - started
    if args.images_dir is not None:
        shown = [int(held_out[k * len(held_out) // 3]) for k in range(3)]
        picture = view_picture(mesh_unit, [pinholes[i] for i in shown], [images[i] for i in shown], vertex_offsets_px)
        images_dir = Path(args.images_dir)
        images_dir.mkdir(parents=True, exist_ok=True)
        picture.save(images_dir / f"real_scan_{args.label}.jpg", quality=88)
        print(f"picture (views {shown}): {images_dir / f'real_scan_{args.label}.jpg'}")
    if args.mesh_output is not None:
        mesh_data.export(args.mesh_output)
    return results


TABLE_HEADER = (
    "| run | method | steps | train s | s/step | mean IoU | min IoU | held-out PSNR in mask (dB) | surface noise (deg) | Chamfer (px) |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def table_row(label: str, method: str, steps: int, train_seconds: float, results: Dict[str, float]) -> str:
    def number(value: float, digits: int) -> str:
        return "-" if not np.isfinite(value) else f"{value:.{digits}f}"

    chamfer = number(results.get("chamfer_pixels", float("nan")), 2)
    seconds = number(train_seconds, 0)
    per_step = number(train_seconds / steps if steps else float("nan"), 2)
    return (
        f"| {label} | {method} | {steps} | {seconds} | {per_step} | {results['mean_iou']:.4f} | {results['min_iou']:.4f} "
        f"| {number(results['held_out_psnr_masked'], 2)} | {results['surface_noise_deg']:.2f} | {chamfer} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="capture in the NeuS layout (image/, mask/, cameras_sphere.npz)")
    parser.add_argument("--method", default="neus-fast")
    parser.add_argument("--steps", type=int, default=2400, help="schedule length (and step limit)")
    parser.add_argument("--minutes", type=float, default=None, help="training time limit (default: none)")
    parser.add_argument("--label", default="run", help="name of the row and of the picture")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="model settings by dotted name")
    parser.add_argument("--rays", type=int, default=None, help="rays per batch (default: small_cpu_config's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout-every", type=int, default=8, help="every k-th view (0, k, 2k, ...) is held out")
    parser.add_argument("--psnr-pixels", type=int, default=8192, help="pixels inside the mask rendered per held-out view")
    parser.add_argument("--mesh-resolution", type=int, default=384, help="marching-cubes samples per axis of the sphere's cube")
    parser.add_argument("--images-dir", type=Path, default=None, help="where to write real_scan_<label>.jpg and .json")
    parser.add_argument("--mesh-output", type=Path, default=None, help="also write the mesh (data units) here")
    parser.add_argument("--save-run", type=Path, default=None, help="keep the run (config.yml, checkpoint) under this directory")
    parser.add_argument("--load-config", type=Path, default=None, help="measure a kept run instead of training")
    parser.add_argument("--exact-surface", action="store_true", help="measure a synthetic scene's exact surface instead (no PSNR)")
    parser.add_argument("--filled-recesses", action="store_true",
                        help="with --exact-surface, on the building: its surface with the recesses filled, against the exact one")
    args = parser.parse_args()
    if args.filled_recesses and not args.exact_surface:
        parser.error("--filled-recesses measures an exact surface: add --exact-surface")

    data = resolve_data(args.data)
    print(f"capture: {data}; {torch.get_num_threads()} CPU threads; method {args.method}; "
          f"budget {args.steps} steps" + (f" or {args.minutes:g} min" if args.minutes else ""), flush=True)
    if args.exact_surface:
        model, steps, train_seconds = None, 0, float("nan")
        args.method = "-"
    elif args.load_config is not None:
        model, steps, train_seconds = load(args.load_config)
    else:
        model, steps, train_seconds = train(args, data)
    results = evaluate(model, data, args)
    results.update({"label": args.label, "method": args.method, "steps": steps, "train_seconds": train_seconds,
                    "seconds_per_step": train_seconds / max(steps, 1), "settings": list(args.set), "data": str(data)})
    for name, value in results.items():
        if name != "parts":
            print(f"  {name}: {value:.4f}" if isinstance(value, float) else f"  {name}: {value}")
    if args.images_dir is not None:
        (Path(args.images_dir) / f"real_scan_{args.label}.json").write_text(json.dumps(results, indent=2))
    print(TABLE_HEADER)
    print(table_row(args.label, args.method, steps, train_seconds, results), flush=True)
    if "parts" in results:
        print(parts_table(results["parts"]), flush=True)


if __name__ == "__main__":
    main()
