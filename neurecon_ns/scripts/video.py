"""`neurecon video`: the showcase video of a run, `rgb | normal | mesh` side by side along a camera path.

    neurecon camera-path --load-config RUN/config.yml --kind small-circle --views 3 5 7
    neurecon video --load-config RUN/config.yml --camera-path RUN/camera_paths/small-circle.json --output showcase.mp4

The rgb and normal panels are the model's own renders (`get_outputs_for_camera`, as `ns-render` does); the
mesh panel is the run's surface, extracted in the training space and rasterised on the CPU from the same camera.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Tuple

import numpy as np
from rich.console import Console

from neurecon_ns.errors import UserInputError
from neurecon_ns.render.rasterize import MeshColors, MeshRenderer
from neurecon_ns.render.video import (
    VIDEO_CODECS,
    Panel,
    check_ffmpeg,
    check_mesh,
    load_mesh,
    overridden_render_mode,
    read_camera_path,
    write_showcase,
)


@dataclass
class Video:
    """Render a run along a camera_path.json into one video of panels side by side (rgb | normal | mesh)."""

    load_config: Path
    """config.yml of the run (written by ns-train)."""
    camera_path: Path
    """camera_path.json from `neurecon camera-path` or the viewer's render panel."""
    output: Path = Path("showcase.mp4")
    """Video to write (.mp4 or .gif)."""
    panels: Tuple[Panel, ...] = ("rgb", "normal", "mesh")
    """Panels from left to right: model outputs (rgb, normal, depth, accumulation) and the mesh."""
    mesh: Optional[Path] = None
    """Mesh to show instead of extracting one from the run (.ply/.obj/.glb)."""
    mesh_space: Literal["training", "data"] = "training"
    """Coordinates of --mesh: the run's training space (unit sphere), or the data's own units."""
    mesh_resolution: int = 256
    """Marching-cubes resolution when the mesh is extracted from the run."""
    mesh_colors: MeshColors = "shaded"
    """Mesh panel: grey under a headlight, world normals as colours, or the mesh's vertex colours (shaded)."""
    mesh_background: float = 0.0
    """Grey level behind the mesh (0 black, 1 white)."""
    render_mode: Optional[Literal["volume", "surface"]] = None
    """Model panels: volume rendering as trained, or the much faster surface rendering; the run's setting by default."""
    downscale: float = 1.0
    """Render at the camera path's resolution divided by this."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs."""

    def main(self) -> None:
        from neurecon_ns.mesh.model_mesh import extract_model_surface
        from neurecon_ns.mesh.postprocess import transform_mesh
        from neurecon_ns.runs import load_run

        console = Console()
        if self.output.suffix.lower() not in VIDEO_CODECS:
            raise UserInputError(f"--output {self.output}: unknown video format '{self.output.suffix}'; use one of {', '.join(VIDEO_CODECS)}.")
        if not self.panels:
            raise UserInputError("--panels is empty; name at least one of rgb, normal, depth, accumulation, mesh.")
        if self.downscale <= 0:
            raise UserInputError(f"--downscale {self.downscale:g}: must be positive.")
        if self.mesh_colors == "vertex" and self.mesh is None:
            raise UserInputError("--mesh-colors vertex needs a mesh with vertex colours passed with --mesh.")
        check_ffmpeg()
        cameras, fps = read_camera_path(self.camera_path)
        if self.downscale != 1.0:
            cameras.rescale_output_resolution(1.0 / self.downscale)
        mesh = load_mesh(self.mesh) if self.mesh is not None else None
        if mesh is not None and self.mesh_colors == "vertex" and mesh.visual.kind != "vertex":
            raise UserInputError(f"{self.mesh}: the mesh has no vertex colours; use --mesh-colors shaded or normal.")

        run = load_run(self.load_config, device=self.device)
        model = run.model
        model_panels = [name for name in self.panels if name != "mesh"]
        mesh_renderer = None
        if "mesh" in self.panels:
            if mesh is None:
                console.print(f"Extracting the surface at resolution {self.mesh_resolution} ...")
                mesh = extract_model_surface(model, resolution=self.mesh_resolution, progress=True)
                check_mesh(mesh, f"surface of {self.load_config}")
            elif self.mesh_space == "data":
                mesh = transform_mesh(mesh, np.linalg.inv(run.unit_to_data))
            mesh_renderer = MeshRenderer(mesh)
            console.print(f"Mesh: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces")

        width, height = int(cameras.width[0]), int(cameras.height[0])
        console.print(f"Rendering {len(cameras)} frames of {len(self.panels)} x {width}x{height} at {fps:g} fps ...")
        with overridden_render_mode(model, self.render_mode):
            times = write_showcase(
                self.output,
                cameras,
                fps,
                panels=self.panels,
                model=model if model_panels else None,
                mesh_renderer=mesh_renderer,
                mesh_colors=self.mesh_colors,
                mesh_background=self.mesh_background,
            )
        console.print(
            f"Wrote {self.output}: {times.num_frames} frames in {times.total_seconds:.1f} s "
            f"(model {times.model_seconds:.1f} s, mesh {times.mesh_seconds:.1f} s)"
        )
