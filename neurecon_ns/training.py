"""Short in-process training runs through nerfstudio's own `Trainer`: the demo, tests and benchmarks.

`small_cpu_config` shrinks any method of the plugin to a size that trains on a laptop CPU in a
minute or two (smaller networks, fewer rays and samples, a short schedule); everything else,
the data parser, data manager, model, losses and optimiser, is the method's own.

`train_short` is what `neurecon demo`, the convergence tests and the time-to-quality benchmark share: a
method at that size trained on a scene from `data/synthetic.py` (its exact surface is known), its surface
from `mesh/model_mesh.py` and its distances to the exact one from `mesh/evaluate.py`, in the unit-sphere
space of the scene, where the object spans about 1.3 units.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import math
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

import numpy as np
import torch
import trimesh
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.schedulers import CosineDecaySchedulerConfig, ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from neurecon_ns.mesh.evaluate import GeometryReport, compare_meshes
from neurecon_ns.mesh.model_mesh import extract_model_surface
from neurecon_ns.mesh.postprocess import transform_mesh
from neurecon_ns.model_components.samplers import ErrorBoundedSamplerConfig, NeuSSamplerConfig, UnisurfSamplerConfig


def method_config(method_name: str) -> TrainerConfig:
    """A fresh copy of a registered method's configuration."""
    from nerfstudio.configs.method_configs import all_methods

    if method_name not in all_methods:
        from neurecon_ns.errors import UserInputError

        raise UserInputError(f"unknown method '{method_name}'; run `ns-train --help` for the registered names.")
    return copy.deepcopy(all_methods[method_name])


def small_cpu_config(
    config: TrainerConfig,
    data: Path,
    output_dir: Path,
    steps: int,
    hidden_dim: int = 64,
    num_layers: int = 4,
    rays_per_batch: Optional[int] = None,
    seed: int = 0,
) -> TrainerConfig:
    """The method shrunk for a CPU: small networks, fewer rays, schedule fitted to `steps`.

    Hash-grid methods take their CPU size (`fit_hash_grid_method_to_cpu`: 512 rays); the others small MLPs
    (`hidden_dim` x `num_layers`) and 256 rays. `rays_per_batch` overrides either.
    """
    config = copy.deepcopy(config)
    config.machine.device_type = "cpu"
    config.machine.seed = seed
    config.vis = "tensorboard"
    config.output_dir = Path(output_dir)
    config.max_num_iterations = steps
    config.steps_per_save = steps
    config.save_only_latest_checkpoint = True
    config.steps_per_eval_batch = steps + 1
    config.steps_per_eval_image = steps + 1
    config.steps_per_eval_all_images = steps + 1
    config.logging.steps_per_log = max(steps // 10, 1)
    config.logging.local_writer.enable = False
    config.data = Path(data)

    config.pipeline.datamanager.data = Path(data)
    if has_hash_grid(config):
        fit_hash_grid_method_to_cpu(config, steps)
    else:
        model = config.pipeline.model
        geometry = model.networks.geometry
        geometry.hidden_dim = hidden_dim
        geometry.num_layers = num_layers
        geometry.skip_layers = (num_layers // 2,) if num_layers >= 4 else ()
        geometry.feature_dim = hidden_dim
        radiance = model.networks.radiance
        radiance.hidden_dim = hidden_dim
        radiance.num_layers = 2
        _fit_common_to_cpu(config, steps, rays_per_batch=256)
    if rays_per_batch is not None:
        config.pipeline.datamanager.train_num_rays_per_batch = rays_per_batch
        config.pipeline.datamanager.eval_num_rays_per_batch = rays_per_batch
    return config


def has_hash_grid(config: TrainerConfig) -> bool:
    """Whether the method's geometry network is on the hash grid (the fast preset)."""
    return config.pipeline.model.networks.geometry.encoding == "hash"


def fit_hash_grid_method_to_cpu(config: TrainerConfig, steps: int) -> None:
    """The CPU size of a hash-grid method, in place: the grid shrunk (the MLPs are already small) with its coarsest
    level read through quadratic B-splines, the torch grid with its closed-form SDF gradient, a 48^3 occupancy grid,
    512 rays, the CPU size of the sampler, the mask loss at 0.5, the curvature loss at the surface and the grid
    smoothness term, and every schedule fitted to `steps`. `ns-train neus-fast --machine.device-type cpu` trains at
    this size (`SurfaceTrainerConfig.cpu_size`), and so do `neurecon demo` and the benchmarks.

    512 rays: each cell of a grid is trained only by the rays that pass through it, so a grid needs more rays
    per step than an MLP to see every cell. The mask loss at 0.5 rather than NeuS's 0.1 holds the silhouettes to
    the masks within a short schedule. The surface's smoothness comes from three parts, each chosen by runs on DTU
    scan 65 and the DTU-scale building (docs/benchmarks.md, "Real scan"): the quadratic coarsest level takes away
    the creases along its cell faces, the grid smoothness term (1e-2 on the four coarse levels' vertices) keeps
    the coarse levels' features smooth, and the curvature loss (3e-3 on each ray's two samples of highest weight)
    evens out what the fine levels leave; with the quadratic level a stronger curvature loss rounds the building's
    edges and windows."""
    model = config.pipeline.model
    grid = model.networks.geometry.hash_grid
    _shrink_hash_grid(grid, steps)
    grid.implementation = "torch"
    # on a CPU the torch grid's closed-form gradient is the cheapest of the three (docs/speed.md has the times)
    model.networks.gradient = "analytic"
    model.occupancy_grid_resolution = min(model.occupancy_grid_resolution, 48)
    if model.mask_loss_weight > 0:
        model.mask_loss_weight = 0.5
    model.curvature_loss_weight, model.curvature_points = 3e-3, "surface"
    model.grid_smoothness_loss_weight = 1e-2
    _fit_common_to_cpu(config, steps, rays_per_batch=512)


def _fit_common_to_cpu(config: TrainerConfig, steps: int, rays_per_batch: int) -> None:
    """What every method's CPU size shares: the rays per batch, the sampler's CPU size, render chunks, schedules."""
    datamanager = config.pipeline.datamanager
    datamanager.train_num_rays_per_batch = rays_per_batch
    datamanager.eval_num_rays_per_batch = rays_per_batch
    model = config.pipeline.model
    model.eval_num_rays_per_chunk = 4096
    model.sampler = dataclasses.replace(model.sampler, **CPU_SAMPLERS[type(model.sampler)])
    _fit_schedules(config, steps)


CPU_SAMPLERS = {
    NeuSSamplerConfig: {"num_uniform": 32, "num_importance": 32, "num_upsample_steps": 2},
    UnisurfSamplerConfig: {"num_search_steps": 128, "num_interval": 32, "num_free_space": 16},
    ErrorBoundedSamplerConfig: {
        "num_initial_samples": 64,
        "num_samples_per_iteration": 32,
        "max_iterations": 3,
        "num_final_samples": 32,
        "num_coarse_kept": 16,
    },
}
"""Each paper's sampler at the CPU size: about half the samples per ray of its defaults."""


def set_model_setting(config: TrainerConfig, name: str, value) -> None:
    """Set a model setting by dotted name, e.g. `sampler.num_uniform`, as `--pipeline.model.<name>` would; a name
    that starts with `trainer.` sets the trainer's own setting (`trainer.keep_freed_host_memory`,
    `trainer.optimizers.variance.optimizer.lr`: a part of the name may also be a dictionary's key)."""
    target = config.pipeline.model
    if name.startswith("trainer."):
        target, name = config, name[len("trainer."):]
    *path, last = name.split(".")
    for part in path:
        target = target[part] if isinstance(target, dict) else getattr(target, part)
    if isinstance(target, dict):
        target[last] = value
    else:
        setattr(target, last, value)


def apply_model_settings(config: TrainerConfig, settings: Sequence[str]) -> None:
    """`NAME=VALUE` strings (as benchmarks take them on the command line) set with `set_model_setting`;
    a value is read as a Python literal when it is one (numbers, booleans, tuples), else kept as text."""
    for setting in settings:
        name, separator, text = setting.partition("=")
        if not separator:
            from neurecon_ns.errors import UserInputError

            raise UserInputError(f"model setting '{setting}' has no value; write it as NAME=VALUE, e.g. networks.compile=True.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        set_model_setting(config, name, value)


def _shrink_hash_grid(grid, steps: int) -> None:
    """A grid a CPU can afford: 8 levels up to 512 cells per axis (a cell of 1/256 of the unit sphere's diameter:
    0.7 px at the object in a DTU scan at 400x300) in tables of 2^19 entries, which hold the coarse half of the
    levels densely, the coarsest read through quadratic B-splines; the levels all switch on in the first eighth
    of the run, so that the fine ones get most of it (docs/benchmarks.md, "Real scan", has the runs behind these
    choices)."""
    grid.num_levels = 8
    grid.quadratic_levels = 1
    grid.max_resolution = min(grid.max_resolution, 512)
    grid.log2_hashmap_size = min(grid.log2_hashmap_size, 19)
    grid.initial_levels = min(grid.initial_levels, grid.num_levels)
    if grid.steps_per_level > 0:
        grid.steps_per_level = max(1, steps // (8 * max(grid.num_levels - grid.initial_levels, 1)))


def _fit_schedules(config: TrainerConfig, steps: int) -> None:
    """Compress every learning-rate schedule (and the model's step schedules) to `steps`; the curvature loss warms
    up with the learning rate."""
    warm_up_end = min(100, steps // 10)
    for group in config.optimizers.values():
        scheduler = group.get("scheduler")
        if isinstance(scheduler, CosineDecaySchedulerConfig):
            group["scheduler"] = dataclasses.replace(scheduler, warm_up_end=warm_up_end, max_steps=steps)
        elif isinstance(scheduler, ExponentialDecaySchedulerConfig):
            group["scheduler"] = dataclasses.replace(scheduler, max_steps=steps)
    model = config.pipeline.model
    if hasattr(model, "cos_anneal_end") and model.cos_anneal_end > 0:
        model.cos_anneal_end = max(steps // 4, 1)
    model.curvature_warmup_steps = min(model.curvature_warmup_steps, warm_up_end)


def setup_trainer(config: TrainerConfig, local_rank: int = 0, world_size: int = 1):
    """nerfstudio's trainer for `config`, set up in this process (model, data, optimisers, callbacks)."""
    config.set_timestamp()
    config.save_config()  # before nothing is attached to the config, so config.yml stays loadable
    # as `ns-train` does: the same seed gives the same initialisation and the same rays
    random.seed(config.machine.seed + local_rank)
    np.random.seed(config.machine.seed + local_rank)
    torch.manual_seed(config.machine.seed + local_rank)
    trainer = config.setup(local_rank=local_rank, world_size=world_size)
    trainer.setup()
    return trainer


def run_iteration(trainer, step: int) -> None:
    """One training iteration as `Trainer.train` runs it (callbacks before and after), without its
    logging, evaluation and checkpoints: for benchmarks that time or inspect training step by step."""
    trainer.pipeline.train()
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    trainer.train_iteration(step)
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)


def train(config: TrainerConfig, local_rank: int = 0, world_size: int = 1, progress: bool = False):
    """Run nerfstudio's trainer in this process; returns the trainer (its pipeline holds the model).
    `progress` shows a progress bar with the step, the loss and the time left."""
    trainer = setup_trainer(config, local_rank, world_size)
    if progress:
        with training_progress(trainer):
            trainer.train()
    else:
        trainer.train()
    return trainer


@contextmanager
def training_progress(trainer) -> Iterator[None]:
    """A progress bar under the trainer's console output while it trains: step, loss (the plugin's trainer
    records the last step's), time spent and time left."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    first_step = trainer._start_step
    columns = (
        TextColumn("training"),
        BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=CONSOLE) as bar:
        task = bar.add_task("training", total=trainer.config.max_num_iterations, completed=first_step, loss="-")

        def advance(step: int) -> None:
            loss = getattr(trainer, "latest_loss", float("nan"))
            bar.update(task, completed=step + 1, loss=f"{loss:.4f}")

        callback = TrainingCallback(
            where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION], update_every_num_iters=1, func=advance
        )
        trainer.callbacks.append(callback)
        try:
            yield
        finally:
            trainer.callbacks.remove(callback)


@dataclasses.dataclass
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
    trainer: Any = dataclasses.field(repr=False, default=None)
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
