"""Showcase videos: the model's renders and its extracted mesh side by side along a camera path.

A frame is a row of panels of equal height, `rgb | normal | mesh` by default: the volume (or surface)
rendered colour, the rendered normals, and the mesh rasterised from the same camera. Frames go to ffmpeg
through mediapy, as `ns-render` writes its videos.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Literal, Optional, Sequence

import numpy as np
import torch
from jaxtyping import Float, UInt8
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from neurecon_ns.errors import UserInputError
from neurecon_ns.render.rasterize import MeshColors, MeshRenderer, PinholeCamera

Panel = Literal["rgb", "normal", "depth", "accumulation", "mesh"]
VIDEO_CODECS: Dict[str, str] = {".mp4": "h264", ".mov": "h264", ".gif": "gif"}


def check_ffmpeg(purpose: str = "videos") -> str:
    """Path of the ffmpeg binary, or the one-sentence error telling where to get it."""
    path = shutil.which("ffmpeg")
    if path is None:
        raise UserInputError(
            f"ffmpeg was not found on PATH and is needed to write {purpose}; install it "
            "(Debian/Ubuntu: `sudo apt-get install ffmpeg`, conda: `conda install -c conda-forge ffmpeg`) and run again."
        )
    return path


def read_camera_path(path: Path):
    """The `Cameras` and frame rate of a camera_path.json, read exactly as `ns-render camera-path` reads it."""
    from nerfstudio.cameras.camera_paths import get_path_from_json

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: camera path not found; write one with `neurecon camera-path` or the viewer's render panel.")
    try:
        camera_path = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path}: not valid JSON ({error}); write the camera path again.") from None
    missing = [key for key in ("render_height", "render_width", "camera_path", "seconds") if key not in camera_path]
    if missing:
        raise UserInputError(f"{path}: key '{missing[0]}' is missing; this is not a nerfstudio camera_path.json.")
    if not camera_path["camera_path"]:
        raise UserInputError(f"{path}: the camera path has no frames; write it again with --frames of at least 2.")
    if camera_path.get("camera_type", "perspective") != "perspective":
        raise UserInputError(f"{path}: camera_type '{camera_path['camera_type']}' is not supported here; use a perspective path.")
    for index, frame in enumerate(camera_path["camera_path"]):
        if len(frame.get("camera_to_world", ())) != 16 or "fov" not in frame:
            raise UserInputError(f"{path}: frame {index} needs 'camera_to_world' (16 numbers) and 'fov'; write the path again.")
    cameras = get_path_from_json(camera_path)
    fps = len(cameras) / float(camera_path["seconds"])
    return cameras, fps


def to_uint8(image: Float[torch.Tensor, "H W 3"]) -> UInt8[np.ndarray, "H W 3"]:
    """Colours in [0, 1] as 8-bit RGB."""
    return (image.detach().clamp(0.0, 1.0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def side_by_side(panels: Sequence[UInt8[np.ndarray, "H W 3"]]) -> UInt8[np.ndarray, "H total_width 3"]:
    """Panels of one height in a row, padded at the bottom/right to even sides (what H.264 in yuv420p needs)."""
    row = np.concatenate(list(panels), axis=1)
    pad_height, pad_width = row.shape[0] % 2, row.shape[1] % 2
    if pad_height or pad_width:
        row = np.pad(row, ((0, pad_height), (0, pad_width), (0, 0)))
    return row


def model_panels(model, camera, panels: Sequence[Panel]) -> Dict[str, Float[torch.Tensor, "H W 3"]]:
    """The model's outputs for one camera as colour images, coloured as `ns-render` colours them."""
    from nerfstudio.utils import colormaps

    outputs = model.get_outputs_for_camera(camera)
    images: Dict[str, torch.Tensor] = {}
    for name in panels:
        if name == "mesh":
            continue
        if name not in outputs:
            raise UserInputError(f"the model has no output '{name}'; choose --panels among {', '.join(sorted(outputs))} and mesh.")
        if "depth" in name:
            images[name] = colormaps.apply_depth_colormap(outputs[name], accumulation=outputs["accumulation"])
        else:
            images[name] = colormaps.apply_colormap(outputs[name])
    return images


class FrameProgress:
    """Progress of a long render: rich's live bar in a terminal; in a log (no terminal), a plain line about every
    tenth of the frames with the time spent and left."""

    def __init__(self, total: int, description: str, enabled: bool = True, console: Optional[Console] = None) -> None:
        self.total, self.description, self.enabled = total, description, enabled
        self.console = console if console is not None else Console(stderr=True)
        self.done = 0
        self.started = time.perf_counter()
        self.bar: Optional[Progress] = None
        if enabled and self.console.is_terminal:
            self.bar = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.bar.add_task(description, total=total)

    def __enter__(self) -> "FrameProgress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.stop()

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.advance(self.task)
            return
        if self.enabled and (self.done % max(self.total // 10, 1) == 0 or self.done == self.total):
            elapsed = time.perf_counter() - self.started
            left = elapsed / self.done * (self.total - self.done)
            self.console.print(f"{self.description}: {self.done}/{self.total}, {elapsed:.0f} s spent, about {left:.0f} s left")


@dataclass
class ShowcaseTimes:
    """Where the seconds of a showcase render went."""

    num_frames: int
    model_seconds: float
    mesh_seconds: float
    total_seconds: float


def write_showcase(
    output_path: Path,
    cameras,
    fps: float,
    panels: Sequence[Panel] = ("rgb", "normal", "mesh"),
    model=None,
    mesh_renderer: Optional[MeshRenderer] = None,
    mesh_colors: MeshColors = "shaded",
    mesh_background: float = 0.0,
    progress: bool = True,
) -> ShowcaseTimes:
    """Render every camera of `cameras` into a row of `panels` and write the frames as one video.

    `model` (a nerfstudio model) is needed for every panel but "mesh", `mesh_renderer` for "mesh".
    """
    output_path = Path(output_path)
    codec = VIDEO_CODECS.get(output_path.suffix.lower())
    if codec is None:
        raise UserInputError(f"{output_path}: unknown video format '{output_path.suffix}'; use one of {', '.join(VIDEO_CODECS)}.")
    if "mesh" in panels and mesh_renderer is None:
        raise ValueError("the mesh panel needs a mesh_renderer")
    if any(name != "mesh" for name in panels) and model is None:
        raise ValueError("model panels need a model")
    check_ffmpeg()
    import mediapy

    output_path.parent.mkdir(parents=True, exist_ok=True)
    if model is not None:
        cameras = cameras.to(model.device)
    model_seconds = mesh_seconds = 0.0
    started = time.perf_counter()
    with FrameProgress(len(cameras), "rendering frames", enabled=progress) as bar, ExitStack() as stack:
        writer = None
        for index in range(len(cameras)):
            camera = cameras[index : index + 1]
            images: Dict[str, torch.Tensor] = {}
            if model is not None:
                tick = time.perf_counter()
                images.update(model_panels(model, camera, panels))
                model_seconds += time.perf_counter() - tick
            if mesh_renderer is not None and "mesh" in panels:
                tick = time.perf_counter()
                images["mesh"] = mesh_renderer.render(PinholeCamera.from_cameras(camera.to("cpu")), mesh_colors, mesh_background)
                mesh_seconds += time.perf_counter() - tick
            frame = side_by_side([to_uint8(images[name]) for name in panels])
            if writer is None:
                writer = stack.enter_context(mediapy.VideoWriter(output_path, shape=frame.shape[:2], fps=fps, codec=codec))
            writer.add_image(frame)
            bar.advance()
    return ShowcaseTimes(len(cameras), model_seconds, mesh_seconds, time.perf_counter() - started)


@contextmanager
def overridden_render_mode(model, mode: Optional[str]) -> Iterator[None]:
    """The surface model renders in `mode` ("volume" or "surface") inside the block; as configured for None.

    The mode is read from the model's `render_mode` (which the viewer's dropdown switches) where it has one, else
    from its config; both are set and restored.
    """
    previous_config = model.config.render_mode
    has_own = isinstance(getattr(model, "render_mode", None), str)
    previous_own = model.render_mode if has_own else None
    if mode is not None:
        model.config.render_mode = mode
        if has_own:
            model.render_mode = mode
    try:
        yield
    finally:
        model.config.render_mode = previous_config
        if has_own:
            model.render_mode = previous_own


def load_mesh(path: Path):
    """A triangle mesh from a file, or the one-sentence error."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: mesh file not found; pass a .ply/.obj/.glb, or leave out --mesh to extract one from the run.")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as error:
        raise UserInputError(f"{path}: not a readable mesh ({type(error).__name__}); export it again as .ply.") from None
    check_mesh(mesh, str(path))
    return mesh


def check_mesh(mesh, where: str) -> None:
    """The one-sentence error for a mesh with no triangle to draw."""
    if len(getattr(mesh, "faces", ())) == 0:
        raise UserInputError(f"{where}: the mesh is empty (no triangles), so there is nothing to render; extract it again or pass another --mesh.")

