"""nerfstudio's data manager with foreground masks delivered as data, and any data parser's capture put
into the unit sphere.

Masks: nerfstudio's own `mask` key makes its pixel sampler draw rays only inside the mask, which would
leave a mask loss nothing to push against, and its mask loader accepts single-channel files only.
Here the data parser lists the masks under `metadata["fg_mask_filenames"]` (the masks that
`nerfstudio-data` lists as `mask_path` are moved there), the dataset loads them (any channel count,
resized with the image) as `fg_mask` in [0, 1], and the pixel sampler gathers them per ray like any
other image-shaped key. RGBA images (`blender-data`) give their alpha channel as the mask.

Region of interest: the models reconstruct what lies in the unit sphere. This plugin's own parsers
(`neus-data`) already deliver that space; for any other parser (`nerfstudio-data`, `blender-data`,
`colmap`, `mvsnet-data`, ...) a similarity found by `data/normalize.py` maps the region the cameras
look at (or the sparse points, or a box the user gives) onto it, computed once from the training
cameras and applied to every split. It is composed into the outputs' `dataparser_transform` /
`dataparser_scale`, so meshes go back to the data's own units.

Photographs coarse to fine (`photo_blur_sigma`): the training photographs can be blurred by a Gaussian whose width
shrinks linearly to none at `photo_blur_end`, as the hash grid's levels switch on coarse to fine in space. A
texture that repeats (bricks, tiles) matches itself again when a face seen obliquely is set back by one period;
blurred below that period, the face is placed by its edges and the rest of the object first.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Literal, Optional, Tuple, Type, Union

import numpy as np
import torch
import torch.nn.functional as F
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.dataparsers.base_dataparser import DataParserConfig, DataparserOutputs
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image

from neurecon_ns.data.neus_dataparser import check_decodes
from neurecon_ns.data.normalize import SphereRegion, check_cameras_outside, find_region, scale_region, to_unit_sphere
from neurecon_ns.data.pixel_sampler import ErrorWeightedPixelSamplerConfig
from neurecon_ns.errors import UserInputError

NERFSTUDIO_INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")


class SurfaceDataset(InputDataset):
    """Images plus optional `fg_mask` [H, W, 1]; honours the data parser's `downscale_factor`."""

    def __init__(self, dataparser_outputs: DataparserOutputs, scale_factor: float = 1.0):
        downscale = float(dataparser_outputs.metadata.get("downscale_factor", 1))
        super().__init__(dataparser_outputs, scale_factor=scale_factor / downscale)
        self.fg_mask_filenames = dataparser_outputs.metadata.get("fg_mask_filenames")
        self.alpha_is_mask = self.fg_mask_filenames is None and _has_alpha(dataparser_outputs.image_filenames)

    def get_metadata(self, data: Dict) -> Dict:
        if self.alpha_is_mask:
            alpha = self.get_numpy_image(data["image_idx"])[..., 3:].astype(np.float32) / 255.0
            return {"fg_mask": (torch.from_numpy(alpha) > 0.5).float()}
        if self.fg_mask_filenames is None:
            return {}
        height, width = data["image"].shape[:2]
        with Image.open(self.fg_mask_filenames[data["image_idx"]]) as mask_image:
            mask_image = mask_image.convert("L")
            if mask_image.size != (width, height):
                mask_image = mask_image.resize((width, height), resample=Image.Resampling.NEAREST)
            mask = np.asarray(mask_image, dtype=np.float32) / 255.0
        return {"fg_mask": (torch.from_numpy(mask)[..., None] > 0.5).float()}


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """`[N, H, W, C]` images blurred by a separable Gaussian of std `sigma` pixels (truncated at 3 sigma), borders
    mirrored; `uint8` images stay `uint8`."""
    radius = max(int(3.0 * sigma + 0.5), 1)
    if radius >= min(images.shape[1:3]):
        raise UserInputError(f"photo_blur_sigma {sigma}: wider than the photographs ({images.shape[2]}x{images.shape[1]}); give a smaller width.")
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[-1]
    planes = images.permute(0, 3, 1, 2).float()
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="reflect"), horizontal, groups=channels)
    planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="reflect"), horizontal.transpose(2, 3), groups=channels)
    blurred = planes.permute(0, 2, 3, 1)
    return blurred.round().clamp(0, 255).to(images.dtype) if images.dtype == torch.uint8 else blurred.to(images.dtype)


def _has_alpha(image_filenames) -> bool:
    """Whether the first image has an alpha channel (read from its header only)."""
    if not image_filenames:
        return False
    with Image.open(image_filenames[0]) as image:
        return image.mode in ("RGBA", "LA")


class SurfaceDataManager(VanillaDataManager[SurfaceDataset]):
    """`VanillaDataManager` over `SurfaceDataset`, with every split mapped into the unit sphere."""

    config: "SurfaceDataManagerConfig"
    region: SphereRegion

    def __init__(
        self,
        config: "SurfaceDataManagerConfig",
        device: Union[torch.device, str] = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ):
        self._blur_cache = None
        """The last blurred photographs: (the batch's images, the width, the blurred images)."""
        data = Path(config.data if config.data is not None else config.dataparser.data)
        check_capture_files(config.dataparser, data)
        try:
            super().__init__(config, device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank, **kwargs)
        except (KeyError, AssertionError, FileNotFoundError, IndexError) as error:
            if not _raised_in_nerfstudio_dataparser(error):
                raise
            raise UserInputError(
                f"{data}: nerfstudio's {type(config.dataparser).__name__} could not read this capture "
                f"({type(error).__name__}: {str(error).strip()}); check the files against that data parser's format."
            ) from None

    def next_train(self, step: int):
        """nerfstudio's batch of rays, its photographs blurred while `photo_blur_sigma(step)` is above 0."""
        self.train_count += 1
        image_batch = next(self.iter_train_image_dataloader)
        assert self.train_pixel_sampler is not None and isinstance(image_batch, dict)
        sigma = self.photo_blur_sigma(step)
        if sigma > 0:
            image_batch = dict(image_batch, image=self._blurred(image_batch["image"], sigma))
        else:
            self._blur_cache = None  # the blurred copy is not needed again
        batch = self.train_pixel_sampler.sample(image_batch)
        return self.train_ray_generator(batch["indices"]), batch

    def photo_blur_sigma(self, step: int) -> float:
        """Width in pixels of the blur on the training photographs at `step`: `photo_blur_sigma` shrinking linearly
        to 0 at `photo_blur_end`, in steps of half a pixel (each width is computed once)."""
        start, end = self.config.photo_blur_sigma, self.config.photo_blur_end
        if start <= 0 or step >= end:
            return 0.0
        return round(2.0 * start * (1.0 - step / end)) / 2.0

    def _blurred(self, images, sigma: float):
        """The batch's photographs blurred by a Gaussian of std `sigma` pixels (kept until the width changes)."""
        if not isinstance(images, torch.Tensor):  # images of different sizes arrive as a list
            return [self._blurred(image[None], sigma)[0] for image in images]
        cached = self._blur_cache
        if cached is not None and cached[0] is images and cached[1] == sigma:
            return cached[2]
        blurred = gaussian_blur(images, sigma)
        self._blur_cache = (images, sigma, blurred)
        return blurred

    def create_train_dataset(self) -> SurfaceDataset:
        where = str(self.config.data)
        if not self.config.roi_scale > 0:
            raise UserInputError(f"--pipeline.datamanager.roi-scale {self.config.roi_scale}: give a positive factor (1 keeps the region found).")
        outputs = self.train_dataparser_outputs
        self.region = find_region(outputs, self.config.roi, self.config.roi_box, where)
        if self.region.source != "data":
            self.region = scale_region(self.region, self.config.roi_scale)
            CONSOLE.print(
                f"Region of interest ({self.region.source}): centre {np.round(self.region.center, 4).tolist()}, "
                f"radius {self.region.radius:.4g} in the data parser's space -> the unit sphere"
            )
        self.train_dataparser_outputs = self.prepare(outputs)
        check_cameras_outside(
            self.train_dataparser_outputs.cameras.camera_to_worlds[:, :3, 3].double().numpy(),
            where,
            self._inside_fix(),
        )
        check_split_decodes(self.train_dataparser_outputs)
        return SurfaceDataset(self.train_dataparser_outputs, scale_factor=self.config.camera_res_scale_factor)

    def create_eval_dataset(self) -> SurfaceDataset:
        outputs = self.prepare(self.dataparser.get_dataparser_outputs(split=self.test_split))
        check_split_decodes(outputs)
        return SurfaceDataset(outputs, scale_factor=self.config.camera_res_scale_factor)

    def prepare(self, outputs: DataparserOutputs) -> DataparserOutputs:
        """The split's outputs in the unit sphere, with nerfstudio-style masks turned into foreground masks."""
        if self.region.source != "data":
            outputs = to_unit_sphere(outputs, self.region)
        if outputs.mask_filenames is not None and outputs.metadata.get("mask_color") is None:
            # a sampling region would starve the mask loss: deliver the masks as data instead
            metadata = dict(outputs.metadata, fg_mask_filenames=list(outputs.mask_filenames))
            outputs = replace(outputs, mask_filenames=None, metadata=metadata)
        return outputs

    def _inside_fix(self) -> str:
        if self.region.source == "data":
            return "the data's unit sphere (its scale_mat) is too large; fix the cameras file or use --pipeline.datamanager.roi cameras."
        return "shrink the region with --pipeline.datamanager.roi-scale below 1 or give the object's bounding box with --pipeline.datamanager.roi box --pipeline.datamanager.roi-box XMIN YMIN ZMIN XMAX YMAX ZMAX."


def check_split_decodes(outputs: DataparserOutputs) -> None:
    """Every image and foreground mask of a split decodes (each file once per process, see `check_decodes`):
    nerfstudio's parsers read sizes from their camera files, so a damaged image would otherwise surface as a
    bare `OSError` inside nerfstudio's image cache."""
    check_decodes(outputs.image_filenames, "re-export the image, or remove it and its frame from the capture")
    masks = outputs.metadata.get("fg_mask_filenames")
    if masks is not None:
        check_decodes(masks, "re-export the mask, or remove it and its frame from the capture")


def _raised_in_nerfstudio_dataparser(error: BaseException) -> bool:
    """Whether the innermost frame of the error lies in one of nerfstudio's data parsers."""
    tb: Optional[types.TracebackType] = error.__traceback__
    last_file = ""
    while tb is not None:
        last_file = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return "nerfstudio" in last_file and "dataparsers" in last_file


def check_capture_files(dataparser: DataParserConfig, data: Path) -> None:
    """What nerfstudio's own parsers would stumble on with an assertion or a KeyError, as one sentence."""
    if isinstance(dataparser, NerfstudioDataParserConfig):
        check_nerfstudio_transforms(data if data.suffix == ".json" else data / "transforms.json")
    elif isinstance(dataparser, BlenderDataParserConfig):
        meta = _read_json(data / "transforms_train.json", "the Blender layout has transforms_{train,val,test}.json")
        if "camera_angle_x" not in meta:
            raise UserInputError(f"{data / 'transforms_train.json'}: no 'camera_angle_x'; the Blender layout gives the horizontal field of view in radians there.")


def _read_json(path: Path, layout: str) -> dict:
    if not path.is_file():
        raise UserInputError(f"{path}: file not found; {layout} (pass the capture's folder with --data).")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserInputError(f"{path}: not readable JSON ({error}); re-export it.") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise UserInputError(f"{path}: no 'frames' list; it must list the images with their 'file_path' and 'transform_matrix'.")
    for index, frame in enumerate(frames):
        for key in ("file_path", "transform_matrix"):
            if key not in frame:
                raise UserInputError(f"{path}: frame {index} has no '{key}'; every frame needs 'file_path' and 'transform_matrix'.")
    return meta


def check_nerfstudio_transforms(path: Path) -> None:
    """transforms.json must give the pinhole intrinsics, once at the top level or in every frame."""
    meta = _read_json(path, "nerfstudio-data reads transforms.json as `ns-process-data` writes it")
    for key in NERFSTUDIO_INTRINSICS:
        if key in meta:
            continue
        missing = [index for index, frame in enumerate(meta["frames"]) if key not in frame]
        if missing:
            raise UserInputError(
                f"{path}: camera intrinsic '{key}' is neither at the top level nor in frame {missing[0]} "
                f"({meta['frames'][missing[0]]['file_path']}); add {', '.join(NERFSTUDIO_INTRINSICS)} at the top level "
                "(one camera) or to every frame, as ns-process-data writes them."
            )


@dataclass
class SurfaceDataManagerConfig(VanillaDataManagerConfig):
    """nerfstudio's vanilla data manager, with foreground masks as per-ray data and the region of interest
    of any data parser mapped into the unit sphere."""

    _target: Type = field(default_factory=lambda: SurfaceDataManager)
    pixel_sampler: ErrorWeightedPixelSamplerConfig = field(default_factory=ErrorWeightedPixelSamplerConfig)
    """nerfstudio's pixel sampler, with `error_share` of the rays drawn where the model's error was last seen high
    (`data/pixel_sampler.py`; 0, the default, draws them all uniformly)."""
    roi: Literal["auto", "data", "cameras", "points", "box"] = "auto"
    """Region of interest that becomes the unit sphere: "data" keeps the parser's own unit sphere (this
    plugin's parsers give one); "cameras" the sphere around the cameras' look-at point that 90% of the views
    see whole; "points" the sphere around the sparse points most cameras see; "box" the sphere through the
    corners of `roi_box`. "auto": "data" for this plugin's parsers, else "points" when the parser gives
    sparse points, else "cameras"."""
    roi_box: Optional[Tuple[float, float, float, float, float, float]] = None
    """XMIN YMIN ZMIN XMAX YMAX ZMAX of the object's box in the data's own units (with `roi box`)."""
    roi_scale: float = 1.0
    """Multiplies the radius of the region found (above 1 when the object sticks out of the sphere)."""
    photo_blur_sigma: float = 0.0
    """Std in pixels of a Gaussian blur on the training photographs at the first step, shrinking linearly to none
    at `photo_blur_end` (0: the photographs as they are; see the module's docstring)."""
    photo_blur_end: int = 1000
    """Step from which the photographs are trained on as they are."""
