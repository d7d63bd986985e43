"""`neurecon synth`: write a procedural scene with exact geometry (images, masks, cameras, GT mesh)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Tuple

from rich.console import Console

from neurecon_ns.data.synthetic import PRESETS, write_scene

SCENE_DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(write_scene).parameters.items()}
"""`write_scene`'s defaults, which the options below take as theirs."""


def _as_option(value):
    """A default as the option holds it (sequences become tuples)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


@dataclass
class Synth:
    """Render an analytic shape from posed cameras into NeuS/IDR, nerfstudio and Blender layouts."""

    output_dir: Optional[Path] = None
    """Directory to write the scene into, synthetic/<shape> by default (must be empty unless --overwrite)."""
    preset: Optional[Literal["dtu"]] = None
    """A ready scene whose settings replace the defaults of the options below (an option set to another value
    than its default keeps it): "dtu", the building at DTU's scale, 49 views of 400x300 in DTU's camera layout,
    millimetres."""
    shape: str = SCENE_DEFAULTS["shape"]
    """Analytic shape: composite, sphere, torus, rounded_box or building."""
    layout: str = SCENE_DEFAULTS["layout"]
    """Camera layout: orbit (all around the object) or dtu (DTU's sphere cap, distances and focal length)."""
    num_views: int = SCENE_DEFAULTS["num_views"]
    """Number of cameras, spread over the upper hemisphere mostly."""
    width: int = SCENE_DEFAULTS["width"]
    """Image width in pixels."""
    height: int = SCENE_DEFAULTS["height"]
    """Image height in pixels."""
    background: str = SCENE_DEFAULTS["background"]
    """Background behind the object: black, white or environment (a function of ray direction)."""
    seed: int = SCENE_DEFAULTS["seed"]
    """Seed of the camera jitter (positions, look-at points, roll)."""
    formats: Tuple[str, ...] = tuple(SCENE_DEFAULTS["formats"])
    """Layouts to write: neus (cameras_sphere.npz), nerfstudio (transforms.json), blender."""
    world_scale: float = SCENE_DEFAULTS["world_scale"]
    """Scale of the unit-sphere -> world similarity (scale_mat[0, 0])."""
    world_translation: Tuple[float, float, float] = tuple(SCENE_DEFAULTS["world_translation"])
    """Translation of the unit-sphere -> world similarity (scale_mat[:3, 3])."""
    mesh_resolution: int = SCENE_DEFAULTS["mesh_resolution"]
    """Marching-cubes grid resolution of the ground-truth mesh."""
    overwrite: bool = SCENE_DEFAULTS["overwrite"]
    """Replace a scene already written in output_dir."""

    def main(self) -> None:
        """Write the scene and list what was written."""
        console = Console()
        settings = {name: getattr(self, name) for name in SCENE_DEFAULTS if name != "output_dir" and hasattr(self, name)}
        if self.preset is not None:
            # an option left at write_scene's default takes the preset's value
            given = {name: value for name, value in settings.items() if value != _as_option(SCENE_DEFAULTS[name])}
            settings = {**settings, **PRESETS[self.preset], **given}
        default_dir = Path("synthetic") / (self.preset or settings["shape"])
        info = write_scene(self.output_dir if self.output_dir is not None else default_dir, **settings)
        console.print(
            f"Wrote '{info.shape_name}' scene: {info.num_views} views of {info.width}x{info.height} in {info.output_dir}"
        )
        written = [
            ("images", info.output_dir / "image" if info.image_paths else None),
            ("NeuS masks", info.output_dir / "mask" if info.mask_paths else None),
            ("NeuS cameras", info.cameras_path),
            ("nerfstudio transforms", info.transforms_path),
            ("Blender layout", info.blender_dir),
            ("GT mesh (world units)", info.gt_mesh_path),
            ("GT mesh (unit sphere)", info.gt_mesh_unit_path),
            ("scene description", info.scene_json_path),
        ]
        for label, path in written:
            if path is not None:
                console.print(f"  {label:<24} {path}")
        scale = info.scale_mat[0, 0]
        translation = ", ".join(f"{value:g}" for value in info.scale_mat[:3, 3])
        console.print(f"  x_world = {scale:g} * x_unit + ({translation})")
