"""Train a method briefly on a synthetic scene and measure its surface against the exact one.

What `neurecon demo`, the convergence tests and the time-to-quality benchmark share: a scene from
`data/synthetic.py` (its exact surface is known), a method shrunk by `training.small_cpu_config`,
nerfstudio's own trainer, `mesh/model_mesh.py` for the surface and `mesh/evaluate.py` for the distances.
Distances are measured in the unit-sphere space of the scene, where the object spans about 1.3 units.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import trimesh

from neurecon_ns.mesh.evaluate import GeometryReport, compare_meshes
from neurecon_ns.mesh.extract import transform_mesh
from neurecon_ns.mesh.model_mesh import extract_model_surface
from neurecon_ns.training import method_config, set_model_setting, small_cpu_config, train


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


def short_run_settings(method: str, steps: int) -> Dict[str, Any]:
    """Model settings with which a run of `method` only `steps` long finds the surface of a synthetic scene
    (masks, black background); `train_short` applies them before its own `overrides`.

    The papers' schedules assume 100k-450k steps; compressed to a few hundred, two methods need more:
    - VolSDF (docs/volsdf.md): the mask loss instead of the scene sphere, so rays end transparent on black
      and the object cannot dissolve into the background; and beta starting at 0.03, since Adam moves beta
      by about its learning rate per step and from the paper's 0.1 would not reach a surface's sharpness;
    - UNISURF (docs/unisurf.md): eq. 10's interval reaches its minimum after 4/9 of the run, as 1.5e-5 does
      after 200k of 450k steps; and a saturated interior (logit scale 50) keeps the initial sphere a surface
      on a black background.
    """
    if method == "volsdf-dtu":
        return {"mask_loss_weight": 0.1, "scene_sphere_background": False, "eikonal_radius": 1.2, "init_beta": 0.03}
    if method == "unisurf-dtu":
        return {"sampler.interval_decay": 9 * math.log(1.0 / 0.05) / (4 * steps), "logit_scale": 50.0}
    return {}


def train_short(
    method: str,
    scene_dir: Path,
    output_dir: Path,
    steps: int,
    mesh_resolution: int = 128,
    num_eval_points: int = 30_000,
    overrides: Optional[Dict[str, Any]] = None,
    dataparser: Any = None,
    progress: bool = False,
    **small_config: Any,
) -> ShortRun:
    """Train `method` for `steps` on the scene in `scene_dir` (written by `write_scene`) and measure it.

    `small_config` goes to `small_cpu_config` (hidden_dim, num_layers, rays_per_batch, seed);
    `overrides` sets model config attributes by dotted name, e.g. `{"mask_loss_weight": 0.0}`, on top of
    `short_run_settings(method, steps)`.
    `progress` shows a progress bar while it trains.
    `dataparser` replaces the method's data parser (its `data` is the capture: `scene_dir`, or
    `scene_dir/blender` for `blender-data`); the surface is measured in the scene's unit-sphere space
    whatever normalisation the run used.
    """
    data = Path(dataparser.data) if dataparser is not None else scene_dir
    config = small_cpu_config(method_config(method), data, output_dir, steps, **small_config)
    if dataparser is not None:
        config.pipeline.datamanager.dataparser = dataparser
    for name, value in {**short_run_settings(method, steps), **(overrides or {})}.items():
        set_model_setting(config, name, value)
    started = time.perf_counter()
    trainer = train(config, progress=progress)
    train_seconds = time.perf_counter() - started
    model = trainer.pipeline.model
    mesh_unit = extract_model_surface(model, resolution=mesh_resolution)
    scene_from_model = _scene_unit_from_model(trainer, Path(scene_dir), data)
    if not np.allclose(scene_from_model, np.eye(4), atol=1e-6):
        mesh_unit = transform_mesh(mesh_unit, scene_from_model)
    reference = trimesh.load(Path(scene_dir) / "gt_mesh_unit.ply", force="mesh")
    report = compare_meshes(mesh_unit, reference, num_points=num_eval_points, thresholds=(0.01, 0.02, 0.05))
    return ShortRun(
        config_path=config.get_base_dir() / "config.yml",
        mesh_unit=mesh_unit,
        report=report,
        train_seconds=train_seconds,
        trainer=trainer,
    )


def _scene_unit_from_model(trainer: Any, scene_dir: Path, data: Path) -> np.ndarray:
    """4x4 map from the run's training space to the scene's unit-sphere space (identity for `neus-data`).

    The run records its map to the data's units (`dataparser_transform` / `dataparser_scale`); the data's
    units are the scene's world (`scale_mat`), or the Blender layout's `blender_scale` times the unit space.
    """
    from neurecon_ns.runs import unit_to_data_matrix

    outputs = trainer.pipeline.datamanager.train_dataparser_outputs
    data_from_model = unit_to_data_matrix(outputs.dataparser_transform, outputs.dataparser_scale)
    scene = json.loads((scene_dir / "scene.json").read_text())
    if data.resolve() == (scene_dir / "blender").resolve():
        data_from_scene = np.diag([scene["blender_scale"]] * 3 + [1.0])
    else:
        data_from_scene = np.asarray(scene["scale_mat"], dtype=np.float64)
    return np.linalg.inv(data_from_scene) @ data_from_model
