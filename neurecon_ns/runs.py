"""Loading a finished (or running) `ns-train` run of this plugin, with clear errors.

Every tool that reads a run (`neurecon mesh`, `neurecon camera-path`, ...) goes through
`load_run`, which checks the config and the checkpoint before nerfstudio touches them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml

from neurecon_ns.errors import UserInputError


@dataclass
class LoadedRun:
    """A run's config, its pipeline (model on `pipeline.model`) and the map back to the data's units."""

    config: object
    pipeline: object
    step: int
    unit_to_data: np.ndarray
    """4x4 map from the training (unit-sphere) space to the data's own units."""

    @property
    def model(self):
        return self.pipeline.model


def read_run_config(config_path: Path):
    """The `TrainerConfig` of a run, checked to be one of this plugin's methods."""
    from nerfstudio.engine.trainer import TrainerConfig

    from neurecon_ns.models.surface_model import SurfaceModelConfig

    config_path = Path(config_path)
    if not config_path.is_file():
        raise UserInputError(f"{config_path}: config file not found; pass the config.yml that ns-train wrote in its output directory.")
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except Exception as error:
        raise UserInputError(f"{config_path}: not a readable nerfstudio config ({type(error).__name__}); pass the config.yml that ns-train wrote.") from None
    if not isinstance(config, TrainerConfig):
        raise UserInputError(f"{config_path}: not a nerfstudio training config; pass the config.yml that ns-train wrote.")
    if not isinstance(config.pipeline.model, SurfaceModelConfig):
        raise UserInputError(
            f"{config_path}: the run uses method '{config.method_name}', which is not a neurecon-ns surface model; "
            "this tool needs a run of neus-dtu, volsdf-dtu, unisurf-dtu or another neurecon-ns method."
        )
    return config


def unit_to_data_matrix(dataparser_transform: torch.Tensor, dataparser_scale: float) -> np.ndarray:
    """Invert nerfstudio's `x_unit = scale * (transform @ [x_data, 1])` as a 4x4 matrix."""
    data_to_unit = np.eye(4)
    data_to_unit[:3, :] = dataparser_scale * np.asarray(dataparser_transform, dtype=np.float64)
    return np.linalg.inv(data_to_unit)


def load_run(
    config_path: Path, test_mode: Literal["test", "val", "inference"] = "inference", device: str = "auto"
) -> LoadedRun:
    """Load the run's latest checkpoint for inference (`device`: "auto", "cpu" or "cuda")."""
    from nerfstudio.utils.eval_utils import eval_setup

    config = read_run_config(config_path)
    run_dir = Path(config_path).resolve().parent
    if not config.get_checkpoint_dir().is_dir() and (run_dir / config.relative_model_dir).is_dir():
        # the run was moved or is read from another working directory: follow the config file
        config.output_dir = run_dir.parent.parent.parent
        config.experiment_name = run_dir.parent.parent.name
        config.timestamp = run_dir.name
    checkpoint_dir = config.get_checkpoint_dir()
    if not checkpoint_dir.is_dir() or not any(checkpoint_dir.glob("step-*.ckpt")):
        raise UserInputError(
            f"{checkpoint_dir}: no checkpoint (step-*.ckpt) for {Path(config_path)}; train longer than --steps-per-save, "
            "or check that the run's output directory was not moved (config.yml records it as output_dir)."
        )
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        config.machine.device_type = "cpu"

    def keep_config(_):
        return config

    _, pipeline, _, step = eval_setup(Path(config_path), test_mode=test_mode, update_config_callback=keep_config)
    outputs = pipeline.datamanager.train_dataparser_outputs
    unit_to_data = unit_to_data_matrix(outputs.dataparser_transform, outputs.dataparser_scale)
    return LoadedRun(config=config, pipeline=pipeline, step=step, unit_to_data=unit_to_data)
