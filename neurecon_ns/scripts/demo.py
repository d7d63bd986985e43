"""`neurecon demo`: the whole pipeline on a scene the project makes itself, on a CPU, in a few minutes.

1. renders a synthetic object with exact geometry (`neurecon synth`) into `OUTPUT/scene`;
2. trains NeuS (`neus-dtu`, shrunk for a CPU) on it with nerfstudio's trainer into `OUTPUT/outputs`;
3. extracts the surface, writes it in the scene's world units to `OUTPUT/mesh.ply`;
4. prints how close it is to the exact surface, and the nerfstudio commands that take it from there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from neurecon_ns.data.synthetic import CAMERA_DISTANCE_RANGE, intrinsics_matrix, write_scene
from neurecon_ns.errors import UserInputError
from neurecon_ns.mesh.postprocess import export_mesh, transform_mesh
from neurecon_ns.training import train_short


@dataclass
class Demo:
    """Make a synthetic scene, train a short CPU run on it, write its mesh and measure it."""

    output_dir: Path = Path("demo")
    """Where the scene, the run and the mesh go."""
    method: str = "neus-dtu"
    """Method to train (neus-dtu, volsdf-dtu, unisurf-dtu, ...)."""
    steps: int = 1500
    """Training iterations (1500 of neus-dtu on 40 views of 64x64: about 3.5 minutes of 2 CPU cores)."""
    shape: str = "composite"
    """Synthetic object: composite, sphere, torus or rounded_box."""
    num_views: int = 40
    """Views rendered of the object."""
    image_size: int = 64
    """Width and height of the views in pixels."""
    mesh_resolution: int = 192
    """Marching-cubes samples per axis of the extracted mesh."""
    seed: int = 0
    """Random seed of the network initialisation and the ray batches."""
    overwrite: bool = False
    """Replace a scene already in OUTPUT_DIR/scene."""

    def main(self) -> None:
        console = Console()
        scene_dir = self.output_dir / "scene"
        if scene_dir.exists() and any(scene_dir.iterdir()) and not self.overwrite:
            if not (scene_dir / "gt_mesh_unit.ply").is_file():
                raise UserInputError(f"{scene_dir}: exists but holds no synthetic scene; pass another --output-dir or --overwrite.")
            console.print(f"Reusing the scene in {scene_dir} (pass --overwrite to render it again).")
        else:
            console.print(f"Rendering '{self.shape}': {self.num_views} views of {self.image_size}x{self.image_size} into {scene_dir} ...")
            write_scene(scene_dir, shape=self.shape, num_views=self.num_views, width=self.image_size,
                        height=self.image_size, mesh_resolution=256, overwrite=self.overwrite)
        console.print(f"Training {self.method} for {self.steps} steps on the CPU ({torch.get_num_threads()} threads) ...")
        run = train_short(self.method, scene_dir, self.output_dir / "outputs", self.steps,
                          mesh_resolution=self.mesh_resolution, seed=self.seed, progress=True)
        scale_mat = json.loads((scene_dir / "scene.json").read_text())["scale_mat"]
        mesh_path = export_mesh(transform_mesh(run.mesh_unit, scale_mat), self.output_dir / "mesh.ply")

        report = run.report
        world_scale = float(scale_mat[0][0])
        table = Table(title=f"{self.method}, {self.steps} steps, {run.train_seconds:.0f} s of training")
        table.add_column("distance to the exact surface")
        table.add_column("unit sphere", justify="right")
        table.add_column("world units", justify="right")
        for name, value in (("accuracy", report.accuracy), ("completeness", report.completeness), ("Chamfer", report.chamfer)):
            table.add_row(name, f"{value:.4f}", f"{value * world_scale:.3f}")
        # footprint of a pixel at the object's centre, seen from the mean camera distance
        pixel = sum(CAMERA_DISTANCE_RANGE) / 2 / intrinsics_matrix(self.image_size, self.image_size)[0, 0]
        table.add_row("one pixel at the object", f"{pixel:.4f}", f"{pixel * world_scale:.3f}")
        table.add_row("F-score at 0.02", f"{report.fscore[0.02]:.3f}", "")
        console.print(table)
        console.print(f"Mesh (world units): {mesh_path}")
        console.print("Next:")
        console.print(f"  ns-viewer --load-config {run.config_path}")
        console.print(f"  ns-render interpolate --load-config {run.config_path} --rendered-output-names rgb normal --output-path {self.output_dir}/video.mp4")
        console.print(f"  ns-train {self.method} --data {scene_dir} --machine.device-type cpu   (the full-size method, viewer on http://localhost:7007)")
