"""Data parser for the layout that IDR and NeuS released for DTU and BlendedMVS.

```
SCENE/
  image/ (or images/)   000000.png ...        RGB views
  mask/  (or masks/)    000.png ...           optional foreground masks (any channel count, 0 / 255)
  cameras_sphere.npz                          world_mat_i (K @ [R|t], OpenCV) and scale_mat_i per view
```

`scale_mat` maps the unit sphere, where the object of interest lies, to the data's own units
(DTU: millimetres): `x_data = scale_mat @ x_unit`. Cameras are decomposed from
`P = world_mat @ scale_mat`, so they come out directly in the unit-sphere space the models train in;
the inverse map is recorded as nerfstudio's `dataparser_transform`/`dataparser_scale`
(`x_unit = scale * (transform @ [x_data, 1])`, saved in `dataparser_transforms.json`).

This module imports nothing from nerfstudio's data managers or pipelines: nerfstudio imports it
while its own configuration modules are still loading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Set, Tuple, Type

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image

from neurecon_ns.data.conventions import flip_camera_axes
from neurecon_ns.errors import UserInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


def decompose_projection(
    projection: Float[np.ndarray, "3 4"],
) -> Tuple[Float[np.ndarray, "3 3"], Float[np.ndarray, "4 4"]]:
    """Split `P ~ K [R | -R C]` into intrinsics `K` (K[2,2] = 1) and an OpenCV camera-to-world matrix.

    RQ decomposition of the left 3x3 block, with signs chosen so that K has a positive diagonal and
    R is a proper rotation (P and -P are the same projection).
    """
    left = projection[:, :3]
    # RQ from QR of the row-reversed transpose
    q, r = np.linalg.qr(np.flipud(left).T)
    intrinsics = np.flipud(np.fliplr(r.T))
    rotation = np.flipud(q.T)
    signs = np.diag(np.sign(np.diag(intrinsics)))
    intrinsics, rotation = intrinsics @ signs, signs @ rotation
    if np.linalg.det(rotation) < 0:
        rotation = -rotation
    center = -np.linalg.solve(left, projection[:, 3])
    c2w = np.eye(4)
    c2w[:3, :3] = rotation.T
    c2w[:3, 3] = center
    return intrinsics / intrinsics[2, 2], c2w


def unit_to_data_as_nerfstudio_transform(scale_mat: Float[np.ndarray, "4 4"]) -> Tuple[np.ndarray, float]:
    """nerfstudio's `(transform 3x4, scale)` with `x_unit = scale * (transform @ [x_data, 1])`.

    For a similarity `scale_mat = [sigma R | c]` this is `transform = [R^T | -R^T c]`, `scale = 1/sigma`;
    for any other affine map the whole inverse goes into `transform` and `scale` is 1.
    """
    linear, offset = scale_mat[:3, :3], scale_mat[:3, 3]
    sigma = abs(np.linalg.det(linear)) ** (1.0 / 3.0)
    rotation = linear / sigma
    if np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6) and np.linalg.det(rotation) > 0:
        transform = np.concatenate([rotation.T, -(rotation.T @ offset)[:, None]], axis=1)
        return transform, float(1.0 / sigma)
    inverse = np.linalg.inv(scale_mat)
    return inverse[:3, :], 1.0


def list_images(directory: Path) -> List[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in IMAGE_SUFFIXES and not p.name.startswith("."))


# files already decoded whole in this process, by (path, size in bytes, modification time): a data
# manager parses its train and eval splits, which share most of their files, and each is decoded once
_DECODED: Set[Tuple[str, int, int]] = set()


def check_decodes(paths: Sequence[Path], fix: str = "replace the file or remove it") -> None:
    """Decode every image in `paths` once, one at a time (memory bounded by the largest image), so that a
    truncated or corrupt file stops here with its name instead of deep inside nerfstudio's image cache.

    PIL reads a header without the pixel data, so a file whose header is intact but whose data is cut
    short only fails when its pixels are decoded (`OSError: image file is truncated`)."""
    for path in paths:
        path = Path(path)
        try:
            stat = path.stat()
        except OSError as error:
            raise UserInputError(f"{path}: cannot be read ({error.strerror}); {fix}.") from None
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key in _DECODED:
            continue
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise UserInputError(f"{path}: the image data cannot be decoded ({error}); {fix}.") from None
        _DECODED.add(key)


def common_image_size(image_paths: List[Path]) -> Tuple[int, int]:
    """`(width, height)` that all the images share; an unreadable image or a second size is a UserInputError."""
    sizes = {}
    for path in image_paths:
        try:
            with Image.open(path) as image:
                sizes.setdefault(image.size, path)
        except OSError as error:
            raise UserInputError(f"{path}: not a readable image ({error}); replace or remove it.") from None
    if len(sizes) > 1:
        (size_a, path_a), (size_b, path_b) = list(sizes.items())[:2]
        raise UserInputError(
            f"{path_b}: image is {size_b[0]}x{size_b[1]} but {path_a.name} is {size_a[0]}x{size_a[1]}; "
            "all views of a scene must have the same size."
        )
    return next(iter(sizes))


def split_indices(num_views: int, split: str, eval_mode: str, eval_interval: int) -> np.ndarray:
    """The views of `split`: all of them for eval_mode "all", else every `eval_interval`-th one is val/test only."""
    all_indices = np.arange(num_views)
    if eval_mode == "all":
        return all_indices
    held_out = all_indices % eval_interval == 0
    return all_indices[held_out] if split in ("val", "test") else all_indices[~held_out]


def first_existing(root: Path, names: Tuple[str, ...]) -> Optional[Path]:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


@dataclass
class NeusDataParserConfig(DataParserConfig):
    """DTU / BlendedMVS in the IDR-NeuS layout (`image/`, `mask/`, `cameras_sphere.npz`)."""

    _target: Type = field(default_factory=lambda: NeusDataParser)
    data: Path = Path("data/DTU/scan65")
    """Scene directory."""
    cameras_file: str = "cameras_sphere.npz"
    """Camera file inside the scene directory (`cameras.npz`, `cameras_large.npz` in some releases)."""
    downscale_factor: int = 1
    """Load images downscaled by this factor (the cameras follow)."""
    masks: Literal["auto", "on", "off"] = "auto"
    """Use foreground masks: "auto" when a mask directory exists, "on" requires it, "off" ignores it."""
    eval_mode: Literal["all", "interval"] = "all"
    """"all": every view is trained on and evaluated (as NeuS does); "interval": every k-th view is held out."""
    eval_interval: int = 8
    """k of the "interval" split."""


@dataclass
class NeusDataParser(DataParser):
    config: NeusDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        root = self.config.data
        if not root.is_dir():
            raise UserInputError(f"{root}: scene directory not found; pass the folder holding image/ and {self.config.cameras_file} with --data.")
        image_dir = first_existing(root, ("image", "images"))
        if image_dir is None:
            raise UserInputError(f"{root}: no image/ or images/ directory; the IDR-NeuS layout keeps the views in {root}/image/.")
        image_paths = list_images(image_dir)
        if not image_paths:
            raise UserInputError(f"{image_dir}: no .png or .jpg images in this directory; copy the views there.")
        width, height = common_image_size(image_paths)
        mask_paths = self._mask_paths(root, image_paths, (width, height))
        check_decodes(image_paths, "re-export the view or remove it (and its mask)")
        if mask_paths is not None:
            check_decodes(mask_paths, "re-export the mask, or pass --pipeline.datamanager.dataparser.masks off")
        intrinsics, c2w_opencv, scale_mat = self._read_cameras(root / self.config.cameras_file, len(image_paths))

        indices = split_indices(len(image_paths), split, self.config.eval_mode, self.config.eval_interval)
        c2w_opengl = flip_camera_axes(c2w_opencv[indices])
        cameras = Cameras(
            camera_to_worlds=torch.from_numpy(c2w_opengl[:, :3, :4]).float(),
            fx=torch.from_numpy(intrinsics[indices, 0, 0]).float()[:, None],
            fy=torch.from_numpy(intrinsics[indices, 1, 1]).float()[:, None],
            cx=torch.from_numpy(intrinsics[indices, 0, 2]).float()[:, None],
            cy=torch.from_numpy(intrinsics[indices, 1, 2]).float()[:, None],
            width=width,
            height=height,
            camera_type=CameraType.PERSPECTIVE,
        )
        transform, scale = unit_to_data_as_nerfstudio_transform(scale_mat)
        metadata: Dict = {"downscale_factor": self.config.downscale_factor, "unit_to_data": scale_mat.tolist()}
        if mask_paths is not None:
            metadata["fg_mask_filenames"] = [mask_paths[i] for i in indices]
        return DataparserOutputs(
            image_filenames=[image_paths[i] for i in indices],
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])),
            metadata=metadata,
            dataparser_transform=torch.from_numpy(transform).float(),
            dataparser_scale=scale,
        )

    def _mask_paths(self, root: Path, image_paths: List[Path], image_size: Tuple[int, int]) -> Optional[List[Path]]:
        if self.config.masks == "off":
            return None
        mask_dir = first_existing(root, ("mask", "masks"))
        if mask_dir is None:
            if self.config.masks == "on":
                raise UserInputError(f"{root}: --pipeline.datamanager.dataparser.masks on, but there is no mask/ directory; add the masks or use 'masks auto'.")
            return None
        mask_paths = list_images(mask_dir)
        if len(mask_paths) != len(image_paths):
            raise UserInputError(
                f"{mask_dir}: {len(mask_paths)} masks for {len(image_paths)} images; "
                "give one mask per view (sorted names must pair up) or pass --pipeline.datamanager.dataparser.masks off."
            )
        for path in mask_paths:
            try:
                with Image.open(path) as mask:
                    mask_size = mask.size
            except OSError as error:
                raise UserInputError(f"{path}: not a readable image ({error}); re-export the mask or pass --pipeline.datamanager.dataparser.masks off.") from None
            if mask_size != image_size:
                raise UserInputError(
                    f"{path}: mask is {mask_size[0]}x{mask_size[1]} but the images are {image_size[0]}x{image_size[1]}; resize the mask to its image."
                )
        return mask_paths

    @staticmethod
    def _read_cameras(path: Path, num_views: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Intrinsics [N,3,3], OpenCV camera-to-world [N,4,4] in the unit-sphere space, and scale_mat."""
        if not path.is_file():
            raise UserInputError(f"{path}: camera file not found; pass --pipeline.datamanager.dataparser.cameras-file if it has another name.")
        try:
            cameras = dict(np.load(path))
        except Exception as error:
            raise UserInputError(f"{path}: not a readable .npz file ({type(error).__name__}); re-export the cameras.") from None
        intrinsics, c2ws = [], []
        scale_mat = None
        for i in range(num_views):
            for key in (f"world_mat_{i}", f"scale_mat_{i}"):
                if key not in cameras:
                    raise UserInputError(f"{path}: key '{key}' is missing but the scene has {num_views} images; the file must hold world_mat_i and scale_mat_i for every view.")
            world_mat = np.asarray(cameras[f"world_mat_{i}"], dtype=np.float64)
            scale_mat_i = np.asarray(cameras[f"scale_mat_{i}"], dtype=np.float64)
            for key, matrix in ((f"world_mat_{i}", world_mat), (f"scale_mat_{i}", scale_mat_i)):
                if matrix.shape != (4, 4) and matrix.shape != (3, 4):
                    raise UserInputError(f"{path}: '{key}' has shape {matrix.shape}, expected 4x4; fix the camera file.")
                if not np.isfinite(matrix).all():
                    raise UserInputError(f"{path}: '{key}' holds NaN or infinite values; fix the camera file.")
            if scale_mat_i.shape == (3, 4):
                scale_mat_i = np.concatenate([scale_mat_i, [[0.0, 0.0, 0.0, 1.0]]])
            projection = (world_mat[:3, :4] @ scale_mat_i)[:3, :4]
            if abs(np.linalg.det(scale_mat_i[:3, :3])) < 1e-12 or np.linalg.matrix_rank(projection[:, :3], tol=1e-9 * np.abs(projection).max()) < 3:
                raise UserInputError(f"{path}: '{f'world_mat_{i}'}' @ '{f'scale_mat_{i}'}' is singular, so view {i} has no camera; fix the camera file.")
            if scale_mat is None:
                scale_mat = scale_mat_i
            elif not np.allclose(scale_mat_i, scale_mat, rtol=1e-5, atol=1e-6):
                CONSOLE.print(f"[yellow]{path}: scale_mat_{i} differs from scale_mat_0; the first one defines the unit sphere.")
            K, c2w = decompose_projection(projection)
            intrinsics.append(K)
            c2ws.append(c2w)
        c2w_all = np.stack(c2ws)
        # the object of interest (the origin) must be in front of every camera
        depth_of_origin = np.einsum("nij,nj->ni", np.transpose(c2w_all[:, :3, :3], (0, 2, 1)), -c2w_all[:, :3, 3])[:, 2]
        behind = np.nonzero(depth_of_origin <= 0)[0]
        if len(behind):
            raise UserInputError(f"{path}: the unit sphere lies behind camera {behind[0]}; world_mat_{behind[0]} or scale_mat_{behind[0]} is wrong.")
        assert scale_mat is not None
        return np.stack(intrinsics), c2w_all, scale_mat


neus_data = DataParserSpecification(
    config=NeusDataParserConfig(),
    description="DTU/BlendedMVS scenes in the IDR-NeuS layout (image/, mask/, cameras_sphere.npz)",
)
