"""Time to quality: Chamfer distance to the exact surface against seconds of training.

Each method is shrunk for the CPU by `training.small_cpu_config` (the MLP methods to 4 x 64 networks and
256 rays; hash-grid methods keep their small MLPs, the grid shrinks) and trained with nerfstudio's own
training iteration on one synthetic object (`data/synthetic.py`: 96x96 views, 40 of them, masks). Every
`--eval-every` seconds of training the clock stops, the surface is extracted (coarse-to-fine, 128^3) and
compared with the exact one; the table gives the Chamfer distance in unit-sphere units and in pixels at
the object (the footprint of one pixel at the object's centre from the mean camera distance). Training
stops at `--minutes` or after `--steps`, whichever comes first; the schedules are fitted to `--steps`.
`--preset dtu` trains on the DTU-scale building instead (`neurecon synth --preset dtu`: 49 views of 400x300 in
DTU's camera layout), and `--data` on a scene that `neurecon synth` wrote; in DTU's layout the surfaces are
compared where some camera sees them (`mesh/capture_metrics.seen_part`), as no camera sees the underside.
`docs/benchmarks.md` keeps results.

    python benchmarks/time_to_quality.py                                  # neus-fast and neus-dtu, 5 minutes each
    python benchmarks/time_to_quality.py --methods neus-fast --preset dtu --steps 2400 --minutes 15 --eval-every 300
    python benchmarks/time_to_quality.py --methods neus-fast --minutes 5 --steps 1000
    python benchmarks/time_to_quality.py --methods neus-fast --set networks.gradient=numerical --rays 512
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import trimesh

from neurecon_ns.data.neus_dataparser import NeusDataParserConfig
from neurecon_ns.data.synthetic import PRESETS, write_scene
from neurecon_ns.mesh.capture_metrics import seen_part
from neurecon_ns.mesh.evaluate import compare_meshes
from neurecon_ns.mesh.model_mesh import extract_model_surface
from neurecon_ns.render.rasterize import PinholeCamera
from neurecon_ns.training import apply_model_settings, method_config, run_iteration, setup_trainer, small_cpu_config


def scene_cameras(scene_dir: Path):
    """Every camera of a written scene, in its unit-sphere space."""
    outputs = NeusDataParserConfig(data=scene_dir, eval_mode="all", masks="off").setup().get_dataparser_outputs("train")
    return [PinholeCamera.from_cameras(outputs.cameras, index) for index in range(len(outputs.cameras))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["neus-fast", "neus-dtu"])
    parser.add_argument("--minutes", type=float, default=5.0, help="training time budget per method")
    parser.add_argument("--steps", type=int, default=1000, help="schedule length (and step limit)")
    parser.add_argument("--eval-every", type=float, default=30.0, help="seconds of training between evaluations")
    parser.add_argument("--shape", default="composite")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a preset scene of `neurecon synth` (its shape, views and size)")
    parser.add_argument("--data", type=Path, default=None, help="a scene written by `neurecon synth` (instead of writing one)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--num-views", type=int, default=40)
    parser.add_argument("--mesh-resolution", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rays", type=int, default=None, help="rays per batch (default: small_cpu_config's choice)")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="model settings by dotted name, e.g. networks.gradient=numerical")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="neurecon_ttq_"))
    if args.data is not None:
        scene_dir = args.data
    elif args.preset is not None:
        scene_dir = write_scene(work / "scene", **PRESETS[args.preset]).output_dir
    else:
        scene_dir = write_scene(work / "scene", shape=args.shape, num_views=args.num_views, width=args.image_size,
                                height=args.image_size, mesh_resolution=256).output_dir
    description = json.loads((scene_dir / "scene.json").read_text())
    reference = trimesh.load(scene_dir / "gt_mesh_unit.ply", force="mesh")
    cameras = scene_cameras(scene_dir) if description.get("layout") == "dtu" else None
    if cameras is not None:
        reference = seen_part(reference, cameras)
    pixel = sum(description["camera_distance_range_unit"]) / 2 / description["intrinsics"][0][0]
    print(f"scene: {description['shape']}, {description['num_views']} views of {description['width']}x{description['height']}; "
          f"one pixel at the object = {pixel:.4f}; {torch.get_num_threads()} CPU threads; budget {args.minutes:g} min or {args.steps} steps")
    print(f"{'method':<12}{'step':>7}{'train s':>9}{'s/step':>8}{'Chamfer':>9}{'pixels':>8}{'F@0.02':>8}")
    budget = args.minutes * 60.0
    for method in args.methods:
        sizes = {} if args.rays is None else {"rays_per_batch": args.rays}
        config = small_cpu_config(method_config(method), scene_dir, work / "outputs", args.steps, seed=args.seed, **sizes)
        apply_model_settings(config, args.set)
        trainer = setup_trainer(config)
        model = trainer.pipeline.model
        train_seconds, step, next_eval = 0.0, 0, args.eval_every
        while step < args.steps and train_seconds < budget:
            started = time.perf_counter()
            run_iteration(trainer, step)
            train_seconds += time.perf_counter() - started
            step += 1
            if train_seconds >= next_eval or step == args.steps or train_seconds >= budget:
                next_eval += args.eval_every
                mesh = extract_model_surface(model, resolution=args.mesh_resolution)
                if cameras is not None:
                    mesh = seen_part(mesh, cameras)
                report = compare_meshes(mesh, reference, num_points=30_000, thresholds=(0.02,))
                print(f"{method:<12}{step:>7}{train_seconds:>9.0f}{train_seconds / step:>8.2f}{report.chamfer:>9.4f}"
                      f"{report.chamfer / pixel:>8.2f}{report.fscore[0.02]:>8.3f}", flush=True)
        del trainer, model


if __name__ == "__main__":
    main()
