"""`neurecon synth`: write a procedural scene with exact geometry (images, masks, cameras, GT mesh)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from rich.console import Console

from neurecon_ns.data.shapes import DEFAULT_SHAPE
from neurecon_ns.data.synthetic import DEFAULT_WORLD_SCALE, DEFAULT_WORLD_TRANSLATION, write_scene


@dataclass
class Synth:
    """Render an analytic shape from posed cameras into NeuS/IDR, nerfstudio and Blender layouts."""

    output_dir: Optional[Path] = None
    """Directory to write the scene into, synthetic/<shape> by default (must be empty unless --overwrite)."""
    shape: str = DEFAULT_SHAPE
    """Analytic shape: composite, sphere, torus or rounded_box."""
    num_views: int = 40
    """Number of cameras, spread over the upper hemisphere mostly."""
    width: int = 96
    """Image width in pixels."""
    height: int = 96
    """Image height in pixels."""
    background: str = "black"
    """Background behind the object: black, white or environment (a function of ray direction)."""
    seed: int = 0
    """Seed of the camera jitter (positions, look-at points, roll)."""
    formats: Tuple[str, ...] = ("neus", "nerfstudio")
    """Layouts to write: neus (cameras_sphere.npz), nerfstudio (transforms.json), blender."""
    world_scale: float = DEFAULT_WORLD_SCALE
    """Scale of the unit-sphere -> world similarity (scale_mat[0, 0])."""
    world_translation: Tuple[float, float, float] = DEFAULT_WORLD_TRANSLATION
    """Translation of the unit-sphere -> world similarity (scale_mat[:3, 3])."""
    mesh_resolution: int = 256
    """Marching-cubes grid resolution of the ground-truth mesh."""
    overwrite: bool = False
    """Replace a scene already written in output_dir."""

    def main(self) -> None:
        """Write the scene and list what was written."""
        console = Console()
        info = write_scene(
            self.output_dir if self.output_dir is not None else Path("synthetic") / self.shape,
            shape=self.shape,
            num_views=self.num_views,
            width=self.width,
            height=self.height,
            background=self.background,
            seed=self.seed,
            formats=self.formats,
            world_scale=self.world_scale,
            world_translation=self.world_translation,
            mesh_resolution=self.mesh_resolution,
            overwrite=self.overwrite,
        )
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
