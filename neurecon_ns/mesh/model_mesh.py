"""The surface of a trained model: its level set extracted in the training space, coloured by the radiance
network, culled by the training views, and mapped to the data's units."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from jaxtyping import Float, UInt8
from PIL import Image
from torch import Tensor

from neurecon_ns.data.conventions import flip_camera_axes
from neurecon_ns.errors import UserInputError
from neurecon_ns.mesh.extract import extract_level_set, extract_level_set_dense, progress_bar
from neurecon_ns.mesh.postprocess import cull_by_cameras, transform_mesh
from neurecon_ns.mesh.texture import fill_gutters, rasterize_atlas, texel_points, textured_mesh, unwrap

"""Right-multiplying a camera-to-world matrix by this flips its y and z axes (OpenGL <-> OpenCV)."""


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def sphere_box(model, resolution: int, radius: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The cube around the model's sphere (`sphere_radius`, or `radius`), one voxel wider on every side so
    that a surface touching the sphere is still closed."""
    radius = float(model.config.sphere_radius if radius is None else radius)
    radius = radius * (1.0 + 2.0 / max(int(resolution) - 1, 1))
    return np.full(3, -radius), np.full(3, radius)


def extract_model_surface(
    model,
    resolution: int = 256,
    bbox_radius: Optional[float] = None,
    unit_to_data: Optional[np.ndarray] = None,
    chunk_size: int = 2**16,
    progress: bool = False,
    bbox_min: Optional[Sequence[float]] = None,
    bbox_max: Optional[Sequence[float]] = None,
    level: float = 0.0,
    dense: bool = False,
    **coarse_to_fine,
) -> trimesh.Trimesh:
    """Level set `model.level_set = level` (negative inside) in a box of the training space.

    The box is `[bbox_min, bbox_max]` when given, else the cube around the model's sphere of radius
    `bbox_radius` (default: `sphere_radius`). With `unit_to_data` (a 4x4 map, e.g. `LoadedRun.unit_to_data`)
    the mesh is returned in the data's units. `dense` uses the dense reference path; other keyword arguments
    go to `extract_level_set` (coarse_factor, block_resolution, dilation, sdf_lipschitz).
    """
    if (bbox_min is None) != (bbox_max is None):
        raise UserInputError("give both corners of the bounding box (--bbox-min and --bbox-max) or neither.")
    if bbox_min is None:
        bbox_min, bbox_max = sphere_box(model, resolution, bbox_radius)
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if dense:
                mesh = extract_level_set_dense(
                    model.level_set, bbox_min, bbox_max, resolution, level, device, chunk_size, progress
                )
            else:
                mesh = extract_level_set(
                    model.level_set,
                    bbox_min,
                    bbox_max,
                    resolution,
                    level=level,
                    device=device,
                    chunk_size=chunk_size,
                    progress=progress,
                    **coarse_to_fine,
                )
    finally:
        model.train(was_training)
    if unit_to_data is not None:
        mesh = transform_mesh(mesh, unit_to_data)
    return mesh


def surface_colors(
    model,
    points_unit: Float[np.ndarray, "num_points 3"],
    view_directions: Optional[Float[np.ndarray, "num_points 3"]] = None,
    chunk_size: int = 2**15,
    on_chunk=None,
    camera_centers: Optional[Float[np.ndarray, "num_cameras 3"]] = None,
) -> Float[np.ndarray, "num_points 3"]:
    """RGB in [0, 1] from the radiance network at surface points seen along `view_directions` (unit vectors
    from the eye to the point, as nerfstudio's ray directions).

    Without `view_directions`: seen from the camera of `camera_centers` that faces the point most squarely
    (`nearest_to_head_on`), or, without cameras either, head-on: the view direction is then the opposite of
    the outward surface normal (the convention of IDR and neurecon). `on_chunk(n)` is called after each chunk
    of `n` points (a progress bar)."""
    device = model_device(model)
    colors = np.empty((len(points_unit), 3), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(points_unit), chunk_size):
            points = torch.as_tensor(points_unit[start : start + chunk_size], dtype=torch.float32, device=device)
            _, features, gradient = model.field.get_level_value_and_gradient(points)
            if view_directions is None and camera_centers is not None:
                centers = torch.as_tensor(camera_centers, dtype=torch.float32, device=device)
                directions = nearest_to_head_on(points, model.surface_normals(gradient), centers)
            elif view_directions is None:
                directions = -model.surface_normals(gradient)
            else:
                directions = torch.as_tensor(
                    view_directions[start : start + chunk_size], dtype=torch.float32, device=device
                )
            with torch.no_grad():
                rgb = model.field.get_colors(points, directions, gradient, features)
            colors[start : start + len(points)] = rgb.detach().clamp(0.0, 1.0).float().cpu().numpy()
            if on_chunk is not None:
                on_chunk(len(points))
    finally:
        model.train(was_training)
    return colors


def nearest_to_head_on(
    points: Float[Tensor, "num_points 3"], normals: Float[Tensor, "num_points 3"], centers: Float[Tensor, "num_cameras 3"]
) -> Float[Tensor, "num_points 3"]:
    """Unit direction from the camera centre `c_k` to each point `x`, for the `k` maximising
    `n . (c_k - x) / |c_k - x|`: the camera that looks at the surface most nearly along its normal.

    Unlike the head-on direction `-n`, it is a direction the cameras looked from, so the radiance network
    is not asked for a view it never saw (DTU's cameras cover one side of a hemisphere; much of a surface's
    normals point elsewhere). Occlusion is not tested.
    """
    to_cameras = F.normalize(centers[None, :, :] - points[:, None, :], dim=-1)  # [N, K, 3]
    best = (to_cameras * normals[:, None, :]).sum(dim=-1).argmax(dim=-1)
    return -to_cameras[torch.arange(len(points), device=points.device), best]


def head_on_colors(
    model, points_unit: Float[np.ndarray, "num_points 3"], chunk_size: int = 2**15, on_chunk=None
) -> Float[np.ndarray, "num_points 3"]:
    """`surface_colors` seen head-on: view direction = minus the outward normal."""
    return surface_colors(model, points_unit, None, chunk_size, on_chunk)


def vertex_colors(
    model, vertices_unit: Float[np.ndarray, "num_vertices 3"], chunk_size: int = 2**15
) -> UInt8[np.ndarray, "num_vertices 4"]:
    """RGBA colours of the vertices from the radiance network, seen head-on (`head_on_colors`)."""
    colors = np.full((len(vertices_unit), 4), 255, dtype=np.uint8)
    colors[:, :3] = np.round(head_on_colors(model, vertices_unit, chunk_size) * 255.0).astype(np.uint8)
    return colors


def bake_texture(
    model,
    mesh_unit: trimesh.Trimesh,
    texture_size: int = 2048,
    chunk_size: int = 2**15,
    progress: bool = False,
    padding_px: Optional[int] = None,
    camera_centers: Optional[Float[np.ndarray, "num_cameras 3"]] = None,
) -> trimesh.Trimesh:
    """The mesh (training space) unwrapped into a UV atlas, with the radiance network's colour of the surface
    point under each texel baked into a `texture_size`^2 texture whose gutters are filled. The colour is seen
    head-on, or, with `camera_centers` (the training cameras), from the camera that faces the point most
    squarely (`surface_colors`).

    Memory: the atlas' rasterisation (about 40 bytes per texel) and one chunk of network queries at a time.
    """
    atlas = unwrap(mesh_unit, texture_size, padding_px)
    fragments = rasterize_atlas(atlas)
    points = texel_points(np.asarray(mesh_unit.vertices), atlas, fragments)
    covered = fragments.covered.numpy()
    del fragments
    texture = np.zeros((texture_size, texture_size, 3), dtype=np.uint8)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"baking {texture_size}x{texture_size} texture", total=len(points))
        colors = surface_colors(
            model, points, None, chunk_size, lambda n: bar.advance(task, n), camera_centers
        )
    texture[covered] = np.round(colors * 255.0).astype(np.uint8)
    return textured_mesh(mesh_unit, atlas, fill_gutters(texture, covered))


@dataclass
class TrainingViews:
    """The training cameras of a run, in its training space, as the culling needs them."""

    intrinsics: Float[np.ndarray, "num_views 3 3"]
    c2w_opencv: Float[np.ndarray, "num_views 4 4"]
    image_sizes: np.ndarray
    """`(width, height)` per view."""
    mask_paths: Optional[List[Path]]
    """Foreground masks, one per view, when the data has them."""

    def load_masks(self) -> List[np.ndarray]:
        assert self.mask_paths is not None
        masks = []
        for path in self.mask_paths:
            with Image.open(path) as image:
                masks.append(np.asarray(image.convert("L")) > 127)
        return masks


def training_views(dataparser_outputs) -> TrainingViews:
    """Cameras (nerfstudio's OpenGL poses turned to OpenCV) and masks of a run's training split."""
    cameras = dataparser_outputs.cameras
    num_views = len(cameras)
    c2w = np.tile(np.eye(4), (num_views, 1, 1))
    c2w[:, :3, :4] = cameras.camera_to_worlds.detach().cpu().numpy()
    intrinsics = np.tile(np.eye(3), (num_views, 1, 1))
    intrinsics[:, 0, 0] = cameras.fx.reshape(-1).cpu().numpy()
    intrinsics[:, 1, 1] = cameras.fy.reshape(-1).cpu().numpy()
    intrinsics[:, 0, 2] = cameras.cx.reshape(-1).cpu().numpy()
    intrinsics[:, 1, 2] = cameras.cy.reshape(-1).cpu().numpy()
    sizes = np.stack([cameras.width.reshape(-1).cpu().numpy(), cameras.height.reshape(-1).cpu().numpy()], axis=-1)
    metadata = dataparser_outputs.metadata or {}
    mask_paths = metadata.get("fg_mask_filenames") or dataparser_outputs.mask_filenames
    return TrainingViews(
        intrinsics=intrinsics,
        c2w_opencv=flip_camera_axes(c2w),
        image_sizes=sizes.astype(np.int64),
        mask_paths=[Path(p) for p in mask_paths] if mask_paths else None,
    )


def cull_to_training_views(
    mesh_unit: trimesh.Trimesh, views: TrainingViews, use_masks: bool = True, mask_dilation_px: float = 0.0
) -> trimesh.Trimesh:
    """Faces seen by at least one training view and, with masks, inside the (dilated) mask of every view that
    sees them; the mesh must be in the training space."""
    masks = views.load_masks() if use_masks and views.mask_paths is not None else None
    return cull_by_cameras(
        mesh_unit, views.intrinsics, views.c2w_opencv, views.image_sizes, masks, mask_dilation_px, min_views=1
    )
