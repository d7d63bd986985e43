"""Train a method briefly on a synthetic scene and measure its surface against the exact one.

What `neurecon demo`, the convergence tests and the time-to-quality benchmark share: a scene from
`data/synthetic.py` (its exact surface is known), a method shrunk by `training.small_cpu_config`,
nerfstudio's own trainer, `mesh/model_mesh.py` for the surface and `mesh/evaluate.py` for the distances.
Distances are measured in the unit-sphere space of the scene, where the object spans about 1.3 units.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import trimesh

from neurecon_ns.mesh.evaluate import GeometryReport, compare_meshes
from neurecon_ns.mesh.model_mesh import extract_model_surface
from neurecon_ns.training import method_config, small_cpu_config, train


@dataclass
class ShortRun:
    """A finished short run and how close its surface is to the exact one."""

    config_path: Path
    """The run's config.yml (ns-viewer, ns-render and `neurecon mesh` load it)."""
    mesh_unit: trimesh.Trimesh
    """Extracted surface in the unit-sphere space."""
    report: GeometryReport
    """Distances to the exact surface, unit-sphere units."""
    train_seconds: float
    """Wall-clock seconds of training alone."""
    trainer: Any = field(repr=False, default=None)
    """nerfstudio's trainer (its pipeline holds the model)."""


def train_short(
    method: str,
    scene_dir: Path,
    output_dir: Path,
    steps: int,
    mesh_resolution: int = 128,
    num_eval_points: int = 30_000,
    overrides: Optional[Dict[str, Any]] = None,
    **small_config: Any,
) -> ShortRun:
    """Train `method` for `steps` on the scene in `scene_dir` (written by `write_scene`) and measure it.

    `small_config` goes to `small_cpu_config` (hidden_dim, num_layers, rays_per_batch, seed);
    `overrides` sets model config attributes by dotted name, e.g. `{"mask_loss_weight": 0.0}`.
    """
    config = small_cpu_config(method_config(method), scene_dir, output_dir, steps, **small_config)
    for name, value in (overrides or {}).items():
        target = config.pipeline.model
        *path, last = name.split(".")
        for part in path:
            target = getattr(target, part)
        setattr(target, last, value)
    started = time.perf_counter()
    trainer = train(config)
    train_seconds = time.perf_counter() - started
    model = trainer.pipeline.model
    mesh_unit = extract_model_surface(model, resolution=mesh_resolution)
    reference = trimesh.load(Path(scene_dir) / "gt_mesh_unit.ply", force="mesh")
    report = compare_meshes(mesh_unit, reference, num_points=num_eval_points, thresholds=(0.01, 0.02, 0.05))
    return ShortRun(
        config_path=config.get_base_dir() / "config.yml",
        mesh_unit=mesh_unit,
        report=report,
        train_seconds=train_seconds,
        trainer=trainer,
    )
