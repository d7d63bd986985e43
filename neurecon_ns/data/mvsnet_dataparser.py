"""Data parser for the MVSNet layout that BlendedMVS (and MVSNet's DTU training set) ship in.

```
SCENE/
  blended_images/ (or images/, image/)   00000000.jpg ...      views (`*_masked.jpg` files are skipped)
  cams/ (or Cameras/, cameras/)          00000000_cam.txt ...  one camera per view, paired by name
```

A camera file holds the world-to-camera extrinsic (4x4, OpenCV axes) after the word `extrinsic`, the
3x3 intrinsic after `intrinsic`, then a depth range line that is not needed here:

```
extrinsic
r11 r12 r13 t1
r21 r22 r23 t2
r31 r32 r33 t3
0 0 0 1

intrinsic
fx 0 cx
0 fy cy
0 0 1

DEPTH_MIN DEPTH_INTERVAL (DEPTH_NUM DEPTH_MAX)
```

Cameras come out in the data's own units; the data manager then maps the region the cameras look
at into the unit sphere (`data/normalize.py`, `--pipeline.datamanager.roi`), and records the map
back for mesh export. BlendedMVS scenes in the NeuS release layout (`cameras_sphere.npz`) are read
by `neus-data` instead.

This module imports nothing from nerfstudio's data managers or pipelines: nerfstudio imports it
while its own configuration modules are still loading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal, Tuple, Type

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from neurecon_ns.data.conventions import flip_camera_axes
from neurecon_ns.data.neus_dataparser import (
    IMAGE_SUFFIXES,
    common_image_size,
    first_existing,
    split_indices,
)
from neurecon_ns.errors import UserInputError


def read_mvsnet_camera(path: Path) -> Tuple[Float[np.ndarray, "4 4"], Float[np.ndarray, "3 3"]]:
    """World-to-camera extrinsic (OpenCV) and intrinsic matrix of one `*_cam.txt` file, checked."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path}: not a readable camera file ({type(error).__name__}); re-export it.") from None

    def block(keyword: str, rows: int, columns: int) -> np.ndarray:
        if keyword not in lines:
            raise UserInputError(f"{path}: no '{keyword}' line; an MVSNet camera file holds 'extrinsic' (4x4) and 'intrinsic' (3x3) blocks.")
        start = lines.index(keyword) + 1
        numbers = " ".join(lines[start : start + rows]).split()
        try:
            matrix = np.array([float(value) for value in numbers], dtype=np.float64)
        except ValueError:
            raise UserInputError(f"{path}: the '{keyword}' block holds something other than numbers; fix the camera file.") from None
        if matrix.size != rows * columns or not np.isfinite(matrix).all():
            raise UserInputError(f"{path}: the '{keyword}' block must be {rows} lines of {columns} finite numbers; fix the camera file.")
        return matrix.reshape(rows, columns)

    extrinsic = block("extrinsic", 4, 4)
    intrinsic = block("intrinsic", 3, 3)
    rotation = extrinsic[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-3) or np.linalg.det(rotation) <= 0:
        raise UserInputError(f"{path}: the extrinsic's 3x3 block is not a rotation; the file must hold a world-to-camera [R | t] matrix.")
    if intrinsic[0, 0] <= 0 or intrinsic[1, 1] <= 0:
        raise UserInputError(f"{path}: the intrinsic's focal lengths must be positive, got fx={intrinsic[0, 0]}, fy={intrinsic[1, 1]}.")
    return extrinsic, intrinsic


def camera_file_for(image_path: Path, camera_dir: Path) -> Path:
    """`00000000.jpg` pairs with `cams/00000000_cam.txt`."""
    return camera_dir / f"{image_path.stem}_cam.txt"


@dataclass
class MVSNetDataParserConfig(DataParserConfig):
    """BlendedMVS / MVSNet layout: images and per-view `cams/*_cam.txt` (extrinsic 4x4, intrinsic 3x3)."""

    _target: Type = field(default_factory=lambda: MVSNetDataParser)
    data: Path = Path("data/BlendedMVS/5a3ca9cb270f0e3f14d0eddb")
    """Scene directory."""
    downscale_factor: int = 1
    """Load images downscaled by this factor (the cameras follow)."""
    eval_mode: Literal["all", "interval"] = "all"
    """"all": every view is trained on and evaluated; "interval": every k-th view is held out."""
    eval_interval: int = 8
    """k of the "interval" split."""


@dataclass
class MVSNetDataParser(DataParser):
    config: MVSNetDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        root = self.config.data
        if not root.is_dir():
            raise UserInputError(f"{root}: scene directory not found; pass the folder holding blended_images/ and cams/ with --data.")
        image_dir = first_existing(root, ("blended_images", "images", "image"))
        camera_dir = first_existing(root, ("cams", "Cameras", "cameras"))
        if image_dir is None or camera_dir is None:
            raise UserInputError(f"{root}: the MVSNet layout needs blended_images/ (or images/) and cams/ with one *_cam.txt per view.")
        image_paths = self._image_paths(image_dir)
        width, height = common_image_size(image_paths)
        c2w_opencv, intrinsics = [], []
        for image_path in image_paths:
            camera_path = camera_file_for(image_path, camera_dir)
            if not camera_path.is_file():
                raise UserInputError(f"{camera_path}: missing camera for {image_path.name}; every view needs cams/<name>_cam.txt.")
            extrinsic, intrinsic = read_mvsnet_camera(camera_path)
            if not (0 < intrinsic[0, 2] < width and 0 < intrinsic[1, 2] < height):
                raise UserInputError(
                    f"{camera_path}: principal point ({intrinsic[0, 2]:.1f}, {intrinsic[1, 2]:.1f}) lies outside the "
                    f"{width}x{height} image {image_path.name}; the intrinsics belong to another image size."
                )
            c2w_opencv.append(np.linalg.inv(extrinsic))
            intrinsics.append(intrinsic)
        indices = split_indices(len(image_paths), split, self.config.eval_mode, self.config.eval_interval)
        c2w_opengl = flip_camera_axes(np.stack(c2w_opencv)[indices])
        intrinsics_array = np.stack(intrinsics)[indices]
        cameras = Cameras(
            camera_to_worlds=torch.from_numpy(c2w_opengl[:, :3, :4]).float(),
            fx=torch.from_numpy(intrinsics_array[:, 0, 0]).float()[:, None],
            fy=torch.from_numpy(intrinsics_array[:, 1, 1]).float()[:, None],
            cx=torch.from_numpy(intrinsics_array[:, 0, 2]).float()[:, None],
            cy=torch.from_numpy(intrinsics_array[:, 1, 2]).float()[:, None],
            width=width,
            height=height,
            camera_type=CameraType.PERSPECTIVE,
        )
        extent = float(np.abs(c2w_opengl[:, :3, 3]).max())
        return DataparserOutputs(
            image_filenames=[image_paths[i] for i in indices],
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.tensor([[-extent] * 3, [extent] * 3], dtype=torch.float32)),
            metadata={"downscale_factor": self.config.downscale_factor},
        )

    @staticmethod
    def _image_paths(image_dir: Path) -> List[Path]:
        paths = sorted(
            p for p in image_dir.iterdir()
            if p.suffix in IMAGE_SUFFIXES and not p.name.startswith(".") and not p.stem.endswith("_masked")
        )
        if not paths:
            raise UserInputError(f"{image_dir}: no .png or .jpg images in this directory; copy the views there.")
        return paths


mvsnet_data = DataParserSpecification(
    config=MVSNetDataParserConfig(),
    description="BlendedMVS/MVSNet layout (blended_images/ and cams/*_cam.txt), normalised into the unit sphere",
)
