"""The surface of a trained model: its level set extracted in the training space, coloured by the radiance
network, culled by the training views, and mapped to the data's units."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from jaxtyping import Bool, Float, Int, UInt8
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


def surface_point_chunks(model, points_unit: Float[np.ndarray, "num_points 3"], chunk_size: int, on_chunk=None) -> Iterator:
    """`(start, points, features, gradient)` for `points_unit` in chunks of `chunk_size`, the model in evaluation
    mode meanwhile (restored after); `on_chunk(n)` is called after each chunk of `n` points (a progress bar)."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(points_unit), chunk_size):
            points = torch.as_tensor(points_unit[start : start + chunk_size], dtype=torch.float32, device=device)
            _, features, gradient = model.field.get_level_value_and_gradient(points)
            yield start, points, features, gradient
            if on_chunk is not None:
                on_chunk(len(points))
    finally:
        model.train(was_training)


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
    for start, points, features, gradient in surface_point_chunks(model, points_unit, chunk_size, on_chunk):
        if view_directions is None and camera_centers is not None:
            centers = torch.as_tensor(camera_centers, dtype=torch.float32, device=device)
            directions = nearest_to_head_on(points, model.surface_normals(gradient), centers)
        elif view_directions is None:
            directions = -model.surface_normals(gradient)
        else:
            directions = torch.as_tensor(view_directions[start : start + chunk_size], dtype=torch.float32, device=device)
        with torch.no_grad():
            rgb = model.field.get_colors(points, directions, gradient, features)
        colors[start : start + len(points)] = rgb.detach().clamp(0.0, 1.0).float().cpu().numpy()
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
    views: Optional["TrainingViews"] = None,
    max_views: Optional[int] = 4,
    use_masks: bool = True,
    depth_tolerance: float = 0.01,
    from_photographs: bool = False,
) -> trimesh.Trimesh:
    """The mesh (training space) unwrapped into a UV atlas, with the colour of the surface point under each texel
    (the radiance network's, or the photographs') baked into a `texture_size`^2 texture whose gutters are filled.

    The colour is, with `views` (the training cameras), the average over the views that see the point
    (`select_views`: at most `max_views` of them, those where it covers the most pixels, every one with None;
    `view_averaged_colors`),
    the views chosen per face (at its centroid) and shared by the face's texels; with `from_photographs` too, the
    same average of the photographs' colours where the point projects (`photograph_averaged_colors`);
    otherwise, with `camera_centers`, the colour seen from the camera that faces the point most squarely; otherwise
    the colour seen head-on (`surface_colors`). Texels that no view sees take the head-on colour.

    Memory: the atlas' rasterisation (about 40 bytes per texel), with `views` the chosen views (12 bytes per face
    and view kept) and one view's depth buffer, and one chunk of network queries at a time.
    """
    atlas = unwrap(mesh_unit, texture_size, padding_px)
    fragments = rasterize_atlas(atlas)
    points = texel_points(np.asarray(mesh_unit.vertices), atlas, fragments)
    covered = fragments.covered.numpy()
    texel_faces = fragments.face_index[covered]
    del fragments
    texture = np.zeros((texture_size, texture_size, 3), dtype=np.uint8)
    with progress_bar(progress) as bar:
        if views is not None and len(views.intrinsics) > 0:
            max_views = len(views.intrinsics) if max_views is None else min(max_views, len(views.intrinsics))
            task = bar.add_task("finding the views that see each texel", total=len(views.intrinsics))
            # per face: a face of a mesh simplified to 100k faces covers about a pixel of a DTU view, so its
            # centroid decides visibility at the views' resolution, at a thirtieth of the texels' cost
            selection = select_views(
                mesh_unit, np.asarray(mesh_unit.triangles_center), torch.arange(len(mesh_unit.faces)), views,
                max_views, use_masks, depth_tolerance, device=model_device(model), on_view=lambda: bar.advance(task),
                neighbourhood_px=1 if from_photographs else 0,
            )
            if from_photographs:
                task = bar.add_task(f"baking {texture_size}x{texture_size} texture from the photographs", total=len(views.intrinsics))
                colors, _ = photograph_averaged_colors(
                    points, selection, views, texel_faces, on_view=lambda: bar.advance(task), model=model,
                    query_chunk_size=chunk_size,
                )
            else:
                task = bar.add_task(f"baking {texture_size}x{texture_size} texture from {max_views} views", total=len(points))
                colors = view_averaged_colors(
                    model, points, selection, views.c2w_opencv[:, :3, 3], chunk_size, lambda n: bar.advance(task, n),
                    selection_rows=texel_faces,
                )
        else:
            task = bar.add_task(f"baking {texture_size}x{texture_size} texture", total=len(points))
            colors = surface_colors(
                model, points, None, chunk_size, lambda n: bar.advance(task, n), camera_centers
            )
    texture[covered] = np.round(colors * 255.0).astype(np.uint8)
    result = textured_mesh(mesh_unit, atlas, fill_gutters(texture, covered))
    if views is not None and len(views.intrinsics) > 0:
        seen = selection.weight.sum(dim=1).cpu()[texel_faces] > 0
        result.metadata["texels_seen_fraction"] = float(seen.float().mean()) if len(points) else 0.0
    return result


@dataclass
class ViewSelection:
    """For each surface point, the training views whose colour it takes and their weights."""

    view_index: Int[Tensor, "num_points max_views"]
    """Index of a view that sees the point; -1 in unused slots."""
    weight: Float[Tensor, "num_points max_views"]
    """Its weight `w` (`select_views`); 0 in unused slots."""


def pixel_weight(
    points: Float[Tensor, "num_points 3"], normals: Float[Tensor, "num_points 3"], center: Float[Tensor, "3"], fx: float, fy: float
) -> Float[Tensor, " num_points"]:
    """`w = fx fy cos(theta) / d^2`, theta between the normal and the direction to the camera, d the distance: the
    area in pixels that a unit of surface around the point covers in that view (near the image centre). Averaging
    a view's colour with this weight gives each view the share of the pixels it shows of the point, so the average
    is the single colour closest to the views' colours over all their pixels (least squares)."""
    to_camera = center - points
    distance = to_camera.norm(dim=-1).clamp(min=1e-12)
    cosine = (normals * to_camera).sum(dim=-1) / distance
    return fx * fy * cosine.clamp(min=0.0) / distance**2


def select_views(
    mesh_unit: trimesh.Trimesh,
    points: Float[np.ndarray, "num_points 3"],
    point_faces: Int[Tensor, " num_points"],
    views: "TrainingViews",
    max_views: int = 4,
    use_masks: bool = True,
    depth_tolerance: float = 0.01,
    device: Union[str, torch.device] = "cpu",
    chunk_size: int = 2**20,
    on_view=None,
    neighbourhood_px: int = 0,
) -> ViewSelection:
    """The views that see each point of the mesh (`point_faces`: the face it lies on), at most `max_views` of them,
    those with the largest `pixel_weight`.

    A view sees a point when the point faces it, projects inside its image (and, with `use_masks`, inside its
    mask) and is not occluded: the mesh rasterised from that view (`render.rasterize`) shows at the point's pixel
    the point's own face, nothing, or a surface no nearer than `(1 - depth_tolerance - 1 / (f cos(theta)))` times
    the point's depth (the depth change across a pixel of a surface inclined by theta, with a margin). With
    `neighbourhood_px` > 0, every pixel within that many pixels of the point's must also lie inside the image (and
    mask) and show a surface at the point's depth, within twice that slack per pixel of offset: a point next to a
    silhouette or an occluding edge is not seen, so that a photograph sampled around its projection shows the
    point's own surface. The views are visited one at a time, so memory holds one depth buffer and the
    `max_views` slots per point.
    """
    from neurecon_ns.render.rasterize import project_to_pixels, rasterize

    vertices = torch.as_tensor(np.asarray(mesh_unit.vertices), dtype=torch.float64, device=device)
    faces = torch.as_tensor(np.asarray(mesh_unit.faces), dtype=torch.long, device=device)
    face_normals = torch.as_tensor(np.array(mesh_unit.face_normals), dtype=torch.float32, device=device)
    points_tensor = torch.as_tensor(np.array(points), dtype=torch.float32, device=device)
    point_faces = point_faces.to(device)
    num_points = len(points_tensor)
    view_index = torch.full((num_points, max_views), -1, dtype=torch.long, device=device)
    weight = torch.zeros((num_points, max_views), dtype=torch.float32, device=device)
    for index in range(len(views.intrinsics)):
        camera = views.camera(index)
        width, height = camera.width, camera.height
        fragments = rasterize(vertices, faces, camera)
        depth_buffer = fragments.depth.reshape(-1).float()
        face_buffer = fragments.face_index.reshape(-1)
        del fragments
        mask = None
        if use_masks and views.mask_paths is not None:
            with Image.open(views.mask_paths[index]) as image:
                mask = torch.as_tensor(np.asarray(image.convert("L")) > 127, device=device).reshape(-1)
        center = torch.as_tensor(views.c2w_opencv[index, :3, 3], dtype=torch.float32, device=device)
        for start in range(0, num_points, chunk_size):
            chunk = slice(start, start + chunk_size)
            chunk_points = points_tensor[chunk]
            pixels, depth = project_to_pixels(chunk_points, camera)
            column, row = pixels[:, 0].floor(), pixels[:, 1].floor()
            inside = (depth > 0) & (column >= 0) & (column < width) & (row >= 0) & (row < height)
            pixel = (row.clamp(0, height - 1) * width + column.clamp(0, width - 1)).long()
            normals = face_normals[point_faces[chunk]]
            cosine = (normals * F.normalize(center - chunk_points, dim=-1)).sum(dim=-1)
            # half a pixel across a face inclined by theta changes the depth by up to depth / (2 f cos(theta))
            slack = depth_tolerance + 1.0 / (min(camera.fx, camera.fy) * cosine.clamp(min=0.1))
            unoccluded = (face_buffer[pixel] == point_faces[chunk]) | (depth * (1.0 - slack) <= depth_buffer[pixel])
            seen = inside & unoccluded & (mask[pixel] if mask is not None else True)
            for row_offset in range(-neighbourhood_px, neighbourhood_px + 1):
                for column_offset in range(-neighbourhood_px, neighbourhood_px + 1):
                    if row_offset == 0 and column_offset == 0:
                        continue
                    near_column, near_row = column + column_offset, row + row_offset
                    near_inside = (near_column >= 0) & (near_column < width) & (near_row >= 0) & (near_row < height)
                    near_pixel = (near_row.clamp(0, height - 1) * width + near_column.clamp(0, width - 1)).long()
                    offset_px = max(abs(row_offset), abs(column_offset))
                    continuous = (depth_buffer[near_pixel] - depth).abs() <= 2.0 * offset_px * slack * depth
                    seen &= near_inside & continuous & (mask[near_pixel] if mask is not None else True)
            new_weight = torch.where(seen, pixel_weight(chunk_points, normals, center, camera.fx, camera.fy), 0.0)
            # keep the max_views largest weights: the new view replaces the smallest slot when it beats it
            smallest, slot = weight[chunk].min(dim=1)
            replace = new_weight > smallest
            rows = torch.nonzero(replace)[:, 0]
            weight[start + rows, slot[rows]] = new_weight[rows]
            view_index[start + rows, slot[rows]] = index
        if on_view is not None:
            on_view()
    return ViewSelection(view_index=view_index, weight=weight)


def view_averaged_colors(
    model,
    points_unit: Float[np.ndarray, "num_points 3"],
    selection: ViewSelection,
    camera_centers: Float[np.ndarray, "num_views 3"],
    chunk_size: int = 2**15,
    on_chunk=None,
    selection_rows: Optional[Int[Tensor, " num_points"]] = None,
) -> Float[np.ndarray, "num_points 3"]:
    """RGB in [0, 1]: `sum_k w_k c(x, d_k) / sum_k w_k` over the views `k` of `selection`, `d_k` the direction
    from camera `k`'s centre to the point `x`, `c` the radiance network; head-on where no view sees the point.
    `selection_rows` gives the row of `selection` of each point (its face, when the views were chosen per face);
    by default row `i` is point `i`'s.

    The geometry network runs once per point, the radiance network once per point and chosen view."""
    device = model_device(model)
    centers = torch.as_tensor(camera_centers, dtype=torch.float32, device=device)
    colors = np.empty((len(points_unit), 3), dtype=np.float32)
    for start, points, features, gradient in surface_point_chunks(model, points_unit, chunk_size, on_chunk):
        rows = slice(start, start + chunk_size) if selection_rows is None else selection_rows[start : start + chunk_size]
        view_index = selection.view_index[rows].to(device)
        weight = selection.weight[rows].to(device)
        color_sum = torch.zeros(len(points), 3, device=device)
        with torch.no_grad():
            for slot in range(view_index.shape[1]):
                used = torch.nonzero(view_index[:, slot] >= 0)[:, 0]
                directions = F.normalize(points[used] - centers[view_index[used, slot]], dim=-1)
                rgb = model.field.get_colors(points[used], directions, gradient[used], features[used])
                color_sum[used] += weight[used, slot, None] * rgb.detach().float().clamp(0.0, 1.0)
            weight_sum = weight.sum(dim=1)
            rgb = color_sum / weight_sum.clamp(min=1e-20)[:, None]
            unseen = torch.nonzero(weight_sum <= 0)[:, 0]
            head_on = model.field.get_colors(
                points[unseen], -model.surface_normals(gradient[unseen]), gradient[unseen], features[unseen]
            )
            rgb[unseen] = head_on.detach().float().clamp(0.0, 1.0)
        colors[start : start + len(points)] = rgb.cpu().numpy()
    return colors


def photograph_averaged_colors(
    points_unit: Float[np.ndarray, "num_points 3"],
    selection: ViewSelection,
    views: "TrainingViews",
    selection_rows: Optional[Int[Tensor, " num_points"]] = None,
    chunk_size: int = 2**20,
    on_view=None,
    model=None,
    query_chunk_size: int = 2**15,
) -> Tuple[Float[np.ndarray, "num_points 3"], Bool[np.ndarray, " num_points"]]:
    """RGB in [0, 1]: `sum_k w_k I_k(p_k(x)) / sum_k w_k` over the views `k` of `selection`, `I_k` view `k`'s
    photograph sampled bilinearly where the point `x` projects (`p_k`), and whether some view sees the point (a
    point that none sees takes `model`'s head-on colour, `surface_colors` in chunks of `query_chunk_size`, or is
    left 0 without a model). The photographs' own colours, as photogrammetry textures a mesh:
    sharper than the radiance network where the surface is accurate, misregistered where it is not.
    `selection_rows` as in `view_averaged_colors`. The views are visited one at a time (one photograph in memory)."""
    from neurecon_ns.mesh.texture import sample_texture
    from neurecon_ns.render.rasterize import project_to_pixels

    views.check_photographs()
    points = torch.as_tensor(np.asarray(points_unit), dtype=torch.float32)
    rows = torch.arange(len(points)) if selection_rows is None else selection_rows.cpu()
    view_index, view_weight = selection.view_index.cpu(), selection.weight.cpu()
    color_sum = torch.zeros(len(points), 3)
    weight_sum = torch.zeros(len(points))
    for index in range(len(views.intrinsics)):
        camera = views.camera(index)
        width, height = camera.width, camera.height
        with Image.open(views.image_paths[index]) as image:
            photograph = torch.as_tensor(np.array(image.convert("RGB")), dtype=torch.float32) / 255.0
        # each selection row's weight for this view (the slot that holds the view, 0 if none does), read per point
        row_weight = torch.where(view_index == index, view_weight, 0.0).sum(dim=1)
        for start in range(0, len(points), chunk_size):
            chunk_weight = row_weight[rows[start : start + chunk_size]]
            seen = torch.nonzero(chunk_weight > 0)[:, 0]
            if len(seen) == 0:
                continue
            pixels, _ = project_to_pixels(points[start + seen], camera)
            # pixel centres at k + 1/2 are texel centres of `sample_texture`, whose v runs upwards
            uv = torch.stack([pixels[:, 0] / width, 1.0 - pixels[:, 1] / height], dim=-1)
            color_sum[start + seen] += chunk_weight[seen, None] * sample_texture(photograph, uv)
            weight_sum[start + seen] += chunk_weight[seen]
        if on_view is not None:
            on_view()
    seen = weight_sum > 0
    colors = torch.where(seen[:, None], color_sum / weight_sum.clamp(min=1e-20)[:, None], 0.0).numpy()
    if model is not None and not bool(seen.all()):
        unseen = np.flatnonzero(~seen.numpy())
        colors[unseen] = surface_colors(model, np.asarray(points_unit)[unseen], None, query_chunk_size)
    return colors, seen.numpy()


@dataclass
class TrainingViews:
    """The training cameras of a run, in its training space, as the culling needs them."""

    intrinsics: Float[np.ndarray, "num_views 3 3"]
    c2w_opencv: Float[np.ndarray, "num_views 4 4"]
    image_sizes: np.ndarray
    """`(width, height)` per view."""
    mask_paths: Optional[List[Path]]
    """Foreground masks, one per view, when the data has them."""
    image_paths: Optional[List[Path]] = None
    """The photographs, one per view."""
    distortion: Optional[np.ndarray] = None
    """`[num_views, 6]` lens distortion in nerfstudio's `[k1, k2, k3, k4, p1, p2]`, where any view has some."""

    def camera(self, index: int):
        """View `index` as the rasteriser's `PinholeCamera` (OpenGL axes)."""
        from neurecon_ns.render.rasterize import PinholeCamera

        intrinsics = self.intrinsics[index]
        width, height = (int(size) for size in self.image_sizes[index])
        return PinholeCamera(
            camera_to_world=flip_camera_axes(self.c2w_opencv[index]), fx=float(intrinsics[0, 0]),
            fy=float(intrinsics[1, 1]), cx=float(intrinsics[0, 2]), cy=float(intrinsics[1, 2]), width=width, height=height,
            distortion=None if self.distortion is None else self.distortion[index],
        )

    def check_photographs(self) -> None:
        """One sentence naming the first photograph that is not where the run was trained from."""
        if self.image_paths is None:
            raise ValueError("these training views carry no image paths")
        for path in self.image_paths:
            if not Path(path).is_file():
                raise UserInputError(
                    f"{path}: this training photograph is missing, so the texture cannot be taken from the photographs; "
                    "put the data back where the run was trained from, or bake the radiance field's colour with --texture-color views."
                )

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
        image_paths=[Path(p) for p in dataparser_outputs.image_filenames],
        distortion=lens_distortion(cameras),
    )


def lens_distortion(cameras) -> Optional[np.ndarray]:
    """nerfstudio cameras' `distortion_params` as `[num_views, 6]`, or None where every view is a pinhole."""
    params = cameras.distortion_params
    if params is None:
        return None
    params = params.detach().cpu().numpy().reshape(len(cameras), -1)
    return params.astype(np.float64) if np.any(params != 0) else None


def cull_to_training_views(
    mesh_unit: trimesh.Trimesh, views: TrainingViews, use_masks: bool = True, mask_dilation_px: float = 0.0
) -> trimesh.Trimesh:
    """Faces seen by at least one training view and, with masks, inside the (dilated) mask of every view that
    sees them; the mesh must be in the training space."""
    masks = views.load_masks() if use_masks and views.mask_paths is not None else None
    return cull_by_cameras(
        mesh_unit, views.intrinsics, views.c2w_opencv, views.image_sizes, masks, mask_dilation_px, min_views=1
    )
