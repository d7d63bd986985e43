"""Camera-pose refinement: does `--pipeline.model.camera-optimizer.mode SO3xR3` recover perturbed training poses?

A synthetic scene (`data/synthetic.py`, exact geometry and poses) is copied with every camera perturbed: its
rotation turned by `--degrees` about a random axis and its centre moved by `--shift` times its distance to the
object. neus-dtu (shrunk for the CPU by `training.small_cpu_config`) trains for `--steps` on the perturbed copy,
once with nerfstudio's SO3xR3 camera optimiser ("SO3xR3") and once without ("off"), and, as the reference, on
the exact poses ("exact poses"). The table gives the mean rotation error (degrees) and centre error (unit-sphere
units) of the training poses before and after refinement, and the Chamfer distance of each run's surface to the
exact one. `docs/benchmarks.md` keeps results.

The camera optimiser's schedule is the method's (exponential decay to a tenth of the rate), starting from
`--camera-lr`, ramped up linearly over the first `--camera-warmup` of the run: the surface is a sphere at first,
and the poses' gradient only points towards the truth once the object's shape has formed.

    python benchmarks/pose_refinement.py                           # 3 degrees, 3% of the distance, 600 steps
    python benchmarks/pose_refinement.py --steps 300 --camera-warmup 0 --rows SO3xR3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from neurecon_ns.data.neus_dataparser import NeusDataParserConfig, decompose_projection
from neurecon_ns.data.synthetic import write_scene
from neurecon_ns.mesh.evaluate import compare_meshes
from neurecon_ns.mesh.model_mesh import extract_model_surface
from neurecon_ns.training import method_config, small_cpu_config, train


def rotation_about(axis: np.ndarray, radians: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(radians) * cross + (1 - np.cos(radians)) * cross @ cross


def perturb_scene(scene: Path, target: Path, degrees: float, shift: float, seed: int) -> None:
    """Copy `scene` with every camera turned by `degrees` and its centre moved by `shift` x its distance."""
    shutil.copytree(scene, target)
    rng = np.random.default_rng(seed)
    cameras = dict(np.load(scene / "cameras_sphere.npz"))
    index = 0
    while f"world_mat_{index}" in cameras:
        world_mat, scale_mat = cameras[f"world_mat_{index}"], cameras[f"scale_mat_{index}"]
        intrinsics, c2w = decompose_projection((world_mat @ scale_mat)[:3, :4])
        turn = rotation_about(rng.normal(size=3), np.radians(degrees))
        direction = rng.normal(size=3)
        centre = c2w[:3, 3] + shift * np.linalg.norm(c2w[:3, 3]) * direction / np.linalg.norm(direction)
        rotation = turn @ c2w[:3, :3]
        w2c = np.concatenate([rotation.T, -(rotation.T @ centre)[:, None]], axis=1)
        projection_unit = np.eye(4)
        projection_unit[:3, :4] = intrinsics @ w2c
        cameras[f"world_mat_{index}"] = projection_unit @ np.linalg.inv(scale_mat)
        index += 1
    np.savez(target / "cameras_sphere.npz", **cameras)


def pose_errors(c2w: torch.Tensor, truth: torch.Tensor) -> tuple:
    """Mean rotation angle (degrees) and centre distance between two [N, 3, 4] camera-to-world sets."""
    relative = c2w[:, :3, :3] @ truth[:, :3, :3].transpose(1, 2)
    cosine = ((relative.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
    return float(torch.rad2deg(torch.arccos(cosine)).mean()), float((c2w[:, :3, 3] - truth[:, :3, 3]).norm(dim=-1).mean())


def refined_poses(trainer) -> torch.Tensor:
    """The training poses as the camera optimiser corrects the rays: origins shifted, directions rotated."""
    model = trainer.pipeline.model
    cameras = trainer.pipeline.datamanager.train_dataset.cameras
    c2w = cameras.camera_to_worlds.clone()
    with torch.no_grad():
        correction = model.camera_optimizer(torch.arange(len(c2w)))
    c2w[:, :3, :3] = correction[:, :3, :3] @ c2w[:, :3, :3]
    c2w[:, :3, 3] = c2w[:, :3, 3] + correction[:, :3, 3]
    return c2w


def configure_camera_optimizer(config, lr: float, warmup_steps: int) -> None:
    """SO3xR3 with the method's schedule scaled to start at `lr` (its final rate keeps its ratio to the first),
    after a linear ramp over `warmup_steps`."""
    config.pipeline.model.camera_optimizer.mode = "SO3xR3"
    group = config.optimizers["camera_opt"]
    final_ratio = group["scheduler"].lr_final / group["optimizer"].lr
    group["optimizer"].lr = lr
    group["scheduler"] = dataclasses.replace(
        group["scheduler"], lr_final=lr * final_ratio, warmup_steps=warmup_steps, ramp="linear"
    )


ROWS = ("off", "SO3xR3", "exact poses")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--degrees", type=float, default=3.0)
    parser.add_argument("--shift", type=float, default=0.03, help="centre shift as a fraction of the camera distance")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--camera-lr", type=float, default=3e-3, help="first learning rate of the camera optimiser")
    parser.add_argument("--camera-warmup", type=float, default=0.25, help="fraction of the steps the camera learning rate ramps up over")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="which runs to train")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        scene = write_scene(work / "scene", num_views=args.views, width=args.image_size, height=args.image_size, mesh_resolution=192)
        perturb_scene(scene.output_dir, work / "perturbed", args.degrees, args.shift, args.seed)
        truth = NeusDataParserConfig(data=scene.output_dir).setup().get_dataparser_outputs("train").cameras.camera_to_worlds
        reference = trimesh.load(scene.output_dir / "gt_mesh_unit.ply", force="mesh")
        rows = []
        for row in args.rows:
            data = scene.output_dir if row == "exact poses" else work / "perturbed"
            config = small_cpu_config(method_config("neus-dtu"), data, work / f"run-{row.replace(' ', '-')}", args.steps, seed=args.seed)
            if row == "SO3xR3":
                configure_camera_optimizer(config, args.camera_lr, round(args.camera_warmup * args.steps))
            started = time.perf_counter()
            trainer = train(config)
            seconds = time.perf_counter() - started
            trained_on = trainer.pipeline.datamanager.train_dataset.cameras.camera_to_worlds
            before = pose_errors(trained_on, truth)
            after = pose_errors(refined_poses(trainer), truth) if row == "SO3xR3" else before
            mesh = extract_model_surface(trainer.pipeline.model, resolution=128)
            chamfer = compare_meshes(mesh, reference, num_points=30_000).chamfer
            rows.append((row, before, after, chamfer, seconds))
        print(json.dumps(vars(args)))
        print("| training poses | rotation error before -> after (deg) | centre error before -> after | Chamfer | training s |")
        print("| --- | --- | --- | --- | --- |")
        for row, before, after, chamfer, seconds in rows:
            print(f"| {row} | {before[0]:.2f} -> {after[0]:.2f} | {before[1]:.4f} -> {after[1]:.4f} | {chamfer:.4f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
