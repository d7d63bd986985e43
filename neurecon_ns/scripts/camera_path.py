"""`neurecon camera-path`: write a camera_path.json through or around a run's training views.

The file is what nerfstudio's viewer exports, so `ns-render camera-path --camera-path-filename FILE` renders
it, the viewer loads it ("Load path"), and `neurecon video` makes the rgb | normal | mesh showcase along it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Tuple

import numpy as np
from rich.console import Console

from neurecon_ns.errors import UserInputError
from neurecon_ns.render.camera_paths import camera_path_dict, make_camera_path, mean_up, vertical_fov_deg
from neurecon_ns.runs import read_run_config

PathKind = Literal["interpolate", "spiral", "small-circle", "great-circle", "spherical-spiral"]


def training_cameras(config_path: Path, data: Optional[Path] = None):
    """The run's training cameras (training space) at the resolution it trained on, read through its data parser
    (no checkpoint needed)."""
    config = read_run_config(config_path)
    datamanager = config.pipeline.datamanager
    scene = data if data is not None else (datamanager.data if datamanager.data is not None else config.data)
    if scene is not None:
        datamanager.dataparser.data = Path(scene)
    outputs = datamanager.dataparser.setup().get_dataparser_outputs(split="train")
    cameras = outputs.cameras
    scale = getattr(datamanager, "camera_res_scale_factor", 1.0) / float(outputs.metadata.get("downscale_factor", 1))
    if scale != 1.0:
        cameras.rescale_output_resolution(scale)
    return cameras


@dataclass
class CameraPath:
    """Write a camera_path.json for `ns-render camera-path` and `neurecon video` (poses in the run's training space).

    Kinds: interpolate (through --views in order, all views by default), spiral (NeRF's spiral around the mean
    pose of --views, all by default), small-circle (through 3 views a b c, from a via b to c), great-circle
    (about the target through 2 views), spherical-spiral (from view a on the small circle of 3 views, rising).
    Run with --preview first to see the training cameras and their ids.
    """

    load_config: Path
    """config.yml of the run (written by ns-train)."""
    kind: PathKind = "interpolate"
    """Kind of path."""
    views: Tuple[int, ...] = ()
    """Training view ids the path goes through (see the kinds above; the preview labels every camera with its id)."""
    frames: int = 120
    """Number of frames."""
    fps: float = 30.0
    """Frames per second of the video."""
    resolution: Optional[Tuple[int, int]] = None
    """Width and height of the rendered frames; the training images' size by default."""
    fov_deg: Optional[float] = None
    """Vertical field of view in degrees; that of the first named view (or view 0) by default."""
    target: Optional[Tuple[float, float, float]] = None
    """Point the circles and spirals look at, in the training space; its origin (the object's centre) by default."""
    loop: bool = False
    """Interpolate / circles: go on around back to the start, for a video that repeats seamlessly."""
    ease: bool = True
    """Circles and spherical spiral: start and stop smoothly (ease in and out)."""
    turns: float = 2.0
    """Spiral and spherical spiral: number of turns."""
    rise_deg: float = 30.0
    """Spherical spiral: elevation gained over the turns, in degrees (negative descends)."""
    radius_scale: float = 1.0
    """Spiral: scale of its radii (1 = the 90th percentile of the cameras' offsets from the mean pose)."""
    output: Optional[Path] = None
    """Where to write the json; RUN_DIR/camera_paths/KIND.json by default. The viewer's "Load path" lists
    SCENE/camera_paths/ (the --data directory), where its own exported paths go."""
    preview: bool = False
    """Also write a PNG beside the json that plots the path with the training cameras and their ids."""
    data: Optional[Path] = None
    """The scene directory, if it moved since training."""

    def main(self) -> None:
        console = Console()
        if self.frames < 2:
            raise UserInputError(f"--frames {self.frames}: a camera path needs at least 2 frames; pass a larger --frames.")
        if self.fps <= 0:
            raise UserInputError(f"--fps {self.fps:g}: frames per second must be positive.")
        if self.resolution is not None and min(self.resolution) < 1:
            raise UserInputError(f"--resolution {self.resolution[0]} {self.resolution[1]}: width and height must be positive.")
        cameras = training_cameras(self.load_config, self.data)
        train_c2w = np.tile(np.eye(4), (len(cameras), 1, 1))
        train_c2w[:, :3, :4] = cameras.camera_to_worlds.numpy()
        views = self.views if self.views or self.kind not in ("interpolate", "spiral") else tuple(range(len(cameras)))
        try:
            path_c2w = make_camera_path(
                self.kind,
                train_c2w,
                views,
                self.frames,
                target=self.target,
                loop=self.loop,
                ease=self.ease,
                turns=self.turns,
                rise_deg=self.rise_deg,
                radius_scale=self.radius_scale,
            )
        except ValueError as error:
            raise UserInputError(f"--kind {self.kind} --views {' '.join(map(str, views))}: {error}; run with --preview to see the view ids.") from None

        reference = views[0] if views else 0
        width, height = (int(cameras.width[reference]), int(cameras.height[reference]))
        if self.resolution is not None:
            width, height = self.resolution
        fov = self.fov_deg
        if fov is None:
            fov = vertical_fov_deg(float(cameras.fy[reference]), float(cameras.height[reference]))
        keyframes = train_c2w[list(views)] if self.kind != "spiral" else None
        metadata = {"kind": self.kind, "views": list(views), "space": "training", "config": str(self.load_config)}
        path_json = camera_path_dict(path_c2w, fov, width, height, self.fps, keyframes, self.loop, metadata)

        output = self.output if self.output is not None else Path(self.load_config).parent / "camera_paths" / f"{self.kind}.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(path_json, indent=1))
        console.print(f"Wrote {self.kind} path: {self.frames} frames at {width}x{height}, {self.fps:g} fps -> {output}")
        if self.preview:
            from neurecon_ns.render.preview import plot_camera_path

            preview_path = plot_camera_path(
                output.with_suffix(".png"),
                train_c2w,
                path_c2w,
                views if self.kind != "spiral" else (),
                self.target,
                mean_up(train_c2w),
                width / height,
                title=f"{self.kind} through views {', '.join(map(str, views))}" if self.kind != "spiral" else "spiral",
            )
            console.print(f"Preview: {preview_path}")
        console.print(
            f"Render it: neurecon video --load-config {self.load_config} --camera-path {output} --output showcase.mp4\n"
            f"       or: ns-render camera-path --load-config {self.load_config} --camera-path-filename {output} "
            "--output-path render.mp4 --rendered-output-names rgb normal"
        )
