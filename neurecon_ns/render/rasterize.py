"""A z-buffer triangle rasteriser for meshes, on the CPU or any torch device, with no display and no GPU API.

Cameras follow nerfstudio: OpenGL camera-to-world matrices (x right, y up, z back) and pixel `(row i,
column j)` sampled at its centre `(j + 0.5, i + 0.5)`, as `Cameras.generate_rays` does, so a mesh rendered
here lines up pixel for pixel with the model's renders of the same camera.

`rasterize` finds, for every pixel centre, the nearest triangle that covers it: the edge-function test in
screen space, perspective-correct barycentric coordinates and depth, and a depth test per pixel.
`raycast_fragments` is the slow, obviously right reference (one ray per pixel through trimesh's ray caster)
that the tests hold it against. `shade` turns the fragments into an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Tuple, Union

import numpy as np
import torch
import trimesh
from jaxtyping import Float, Int
from torch import Tensor

MeshColors = Literal["shaded", "normal", "vertex"]
"""How `shade` colours a mesh: grey Lambertian under a headlight, world normals as colours (as the models'
`normal` output), or the mesh's vertex colours under the same headlight."""


@dataclass
class PinholeCamera:
    """One perspective camera in nerfstudio's conventions."""

    camera_to_world: Float[np.ndarray, "4 4"]
    """OpenGL camera-to-world (the camera looks along -z)."""
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion: Optional[np.ndarray] = None
    """Lens distortion as nerfstudio's `Cameras.distortion_params` `[k1, k2, k3, k4, p1, p2]`, applied by
    `project_to_pixels` (and so by `rasterize`, per vertex); None for a pinhole."""

    @classmethod
    def from_cameras(cls, cameras, index: int = 0) -> "PinholeCamera":
        """Camera `index` of a nerfstudio `Cameras` (perspective)."""
        c2w = np.eye(4)
        c2w[:3, :4] = cameras.camera_to_worlds[index].detach().cpu().numpy()
        return cls(
            camera_to_world=c2w,
            fx=float(cameras.fx[index]),
            fy=float(cameras.fy[index]),
            cx=float(cameras.cx[index]),
            cy=float(cameras.cy[index]),
            width=int(cameras.width[index]),
            height=int(cameras.height[index]),
        )

    def pixel_rays(self) -> Tuple[Float[np.ndarray, "H W 3"], Float[np.ndarray, "H W 3"]]:
        """Origins and unit directions of the rays through the pixel centres.

        `d ~ R ((j + 0.5 - cx) / fx, -(i + 0.5 - cy) / fy, -1)`, `o = t`.
        """
        if self.distortion is not None:
            raise ValueError("pixel_rays gives a pinhole camera's rays; this camera has lens distortion")
        rows, columns = np.meshgrid(np.arange(self.height) + 0.5, np.arange(self.width) + 0.5, indexing="ij")
        directions_camera = np.stack(
            [(columns - self.cx) / self.fx, -(rows - self.cy) / self.fy, -np.ones_like(rows)], axis=-1
        )
        directions = directions_camera @ self.camera_to_world[:3, :3].T
        directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
        return np.broadcast_to(self.camera_to_world[:3, 3], directions.shape).copy(), directions


@dataclass
class Fragments:
    """What covers each pixel: the nearest triangle, where on it, and how far."""

    face_index: Int[Tensor, "H W"]
    """Index of the nearest face whose triangle holds the pixel centre, -1 where none does."""
    barycentric: Float[Tensor, "H W 3"]
    """Perspective-correct barycentric coordinates of the pixel centre's point on that face (0 where empty)."""
    depth: Float[Tensor, "H W"]
    """Depth of that point along the camera's viewing axis (-z in camera coordinates), inf where empty."""

    @property
    def mask(self) -> Tensor:
        return self.face_index >= 0


def project_to_pixels(
    points_world: Float[Tensor, "num_points 3"], camera: PinholeCamera
) -> Tuple[Float[Tensor, "num_points 2"], Float[Tensor, " num_points"]]:
    """Continuous pixel coordinates `(u, v)` (column, row; pixel centres at `k + 0.5`) and depth of world points.

    `x_cam = R^T (x - t)`, `depth = -z_cam`, `(x, y) = (x_cam, -y_cam) / depth` (OpenCV's image plane, y down),
    distorted by `camera.distortion` where it is set (`distort`), then `u = cx + fx x`, `v = cy + fy y`.
    """
    c2w = torch.as_tensor(camera.camera_to_world, dtype=points_world.dtype, device=points_world.device)
    points_camera = (points_world - c2w[:3, 3]) @ c2w[:3, :3]
    depth = -points_camera[:, 2]
    image_plane = torch.stack([points_camera[:, 0], -points_camera[:, 1]], dim=-1) / depth[:, None]
    if camera.distortion is not None:
        image_plane = distort(image_plane, torch.as_tensor(camera.distortion, dtype=image_plane.dtype, device=image_plane.device))
    u = camera.cx + camera.fx * image_plane[:, 0]
    v = camera.cy + camera.fy * image_plane[:, 1]
    return torch.stack([u, v], dim=-1), depth


def distort(image_plane: Float[Tensor, "num_points 2"], params: Float[Tensor, "6"]) -> Float[Tensor, "num_points 2"]:
    """Brown-Conrady radial and tangential distortion of points `(x, y)` on OpenCV's image plane (y down), with
    nerfstudio's parameters `[k1, k2, k3, k4, p1, p2]`: the map whose inverse nerfstudio applies to pixel
    coordinates when it makes rays (`camera_utils.radial_and_tangential_undistort`).

    `r = x^2 + y^2`, `d = 1 + k1 r + k2 r^2 + k3 r^3 + k4 r^4`,
    `x' = d x + 2 p1 x y + p2 (r + 2 x^2)`, `y' = d y + 2 p2 x y + p1 (r + 2 y^2)`.
    """
    k1, k2, k3, k4, p1, p2 = params.unbind()
    x, y = image_plane[:, 0], image_plane[:, 1]
    r = x * x + y * y
    radial = 1.0 + r * (k1 + r * (k2 + r * (k3 + r * k4)))
    return torch.stack(
        [radial * x + 2.0 * p1 * x * y + p2 * (r + 2.0 * x * x), radial * y + 2.0 * p2 * x * y + p1 * (r + 2.0 * y * y)],
        dim=-1,
    )


def edge_function(
    start: Float[Tensor, "*bs 2"], end: Float[Tensor, "*bs 2"], point: Float[Tensor, "*bs 2"]
) -> Float[Tensor, "*bs"]:
    """Twice the signed area of the triangle (start, end, point): `(e - s)_x (p - s)_y - (e - s)_y (p - s)_x`."""
    return (end[..., 0] - start[..., 0]) * (point[..., 1] - start[..., 1]) - (end[..., 1] - start[..., 1]) * (
        point[..., 0] - start[..., 0]
    )


def rasterize(
    vertices: Float[Tensor, "num_vertices 3"],
    faces: Int[Tensor, "num_faces 3"],
    camera: PinholeCamera,
    near: float = 1e-3,
    max_pairs: int = 1 << 22,
) -> Fragments:
    """Nearest triangle at every pixel centre.

    Each triangle is tested against the pixel centres inside its screen bounding box: the centre `p` is inside
    when the three screen-space barycentric coordinates `l_k = edge(v_{k+1}, v_{k+2}, p) / edge(v_0, v_1, v_2)`
    are all >= 0. Depth is interpolated perspective-correctly, `1 / z = sum_k l_k / z_k`, and so are the
    barycentric coordinates, `b_k = z l_k / z_k`; the smallest depth wins the pixel. Triangles with a vertex
    closer than `near` to the camera plane are left out (the camera paths stay outside the object).
    `max_pairs` bounds the (triangle, pixel) pairs held in memory at once.
    """
    height, width = camera.height, camera.width
    device = vertices.device
    pixels, depth = project_to_pixels(vertices.to(torch.float64), camera)
    corner_pixels = pixels[faces]  # [F, 3, 2]
    corner_depth = depth[faces]  # [F, 3]
    area = edge_function(corner_pixels[:, 0], corner_pixels[:, 1], corner_pixels[:, 2])
    column_min = torch.ceil(corner_pixels[..., 0].min(dim=1).values - 0.5).clamp(min=0)
    column_max = torch.floor(corner_pixels[..., 0].max(dim=1).values - 0.5).clamp(max=width - 1)
    row_min = torch.ceil(corner_pixels[..., 1].min(dim=1).values - 0.5).clamp(min=0)
    row_max = torch.floor(corner_pixels[..., 1].max(dim=1).values - 0.5).clamp(max=height - 1)
    visible = (
        (corner_depth > near).all(dim=1)
        & (column_max >= column_min)
        & (row_max >= row_min)
        & (area.abs() > 1e-12)
        & torch.isfinite(area)
    )
    face_ids = torch.nonzero(visible)[:, 0]
    num_columns = (column_max - column_min + 1)[face_ids].long()
    num_rows = (row_max - row_min + 1)[face_ids].long()
    pair_counts = num_columns * num_rows

    depth_buffer = torch.full((height * width,), float("inf"), dtype=torch.float64, device=device)
    face_buffer = torch.full((height * width,), -1, dtype=torch.long, device=device)
    barycentric_buffer = torch.zeros((height * width, 3), dtype=torch.float64, device=device)

    pair_ends = torch.cumsum(pair_counts, dim=0)
    chunk_start = 0
    while chunk_start < len(face_ids):
        # as many faces as fit in max_pairs (at least one)
        done = int(pair_ends[chunk_start - 1]) if chunk_start > 0 else 0
        budget = torch.tensor([done + max_pairs], dtype=pair_ends.dtype, device=device)
        chunk_stop = max(int(torch.searchsorted(pair_ends, budget, right=True)[0]), chunk_start + 1)
        chunk = slice(chunk_start, chunk_stop)
        chunk_start = chunk_stop

        counts = pair_counts[chunk]
        pair_face = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
        first_pair = torch.cumsum(counts, dim=0) - counts
        local = torch.arange(int(counts.sum()), device=device) - first_pair[pair_face]
        chunk_faces = face_ids[chunk]
        columns = column_min[chunk_faces][pair_face] + local % num_columns[chunk][pair_face]
        rows = row_min[chunk_faces][pair_face] + torch.div(local, num_columns[chunk][pair_face], rounding_mode="floor")
        centers = torch.stack([columns + 0.5, rows + 0.5], dim=-1)

        corners = corner_pixels[chunk_faces][pair_face]  # [P, 3, 2]
        pair_area = area[chunk_faces][pair_face]
        screen_barycentric = torch.stack(
            [
                edge_function(corners[:, 1], corners[:, 2], centers),
                edge_function(corners[:, 2], corners[:, 0], centers),
                edge_function(corners[:, 0], corners[:, 1], centers),
            ],
            dim=-1,
        ) / pair_area[:, None]
        inside = (screen_barycentric >= 0.0).all(dim=-1)
        if not inside.any():
            continue
        screen_barycentric = screen_barycentric[inside]
        global_face = chunk_faces[pair_face[inside]]
        pixel = (rows[inside] * width + columns[inside]).long()
        inverse_depth_corners = 1.0 / corner_depth[global_face]
        pixel_depth = 1.0 / (screen_barycentric * inverse_depth_corners).sum(dim=-1)
        barycentric = screen_barycentric * inverse_depth_corners * pixel_depth[:, None]

        chunk_depth = torch.full_like(depth_buffer, float("inf")).scatter_reduce(
            0, pixel, pixel_depth, reduce="amin", include_self=True
        )
        wins = (pixel_depth == chunk_depth[pixel]) & (pixel_depth < depth_buffer[pixel])
        face_buffer[pixel[wins]] = global_face[wins]
        barycentric_buffer[pixel[wins]] = barycentric[wins]
        depth_buffer = torch.minimum(depth_buffer, chunk_depth)

    return Fragments(
        face_index=face_buffer.reshape(height, width),
        barycentric=barycentric_buffer.reshape(height, width, 3).to(vertices.dtype),
        depth=depth_buffer.reshape(height, width).to(vertices.dtype),
    )


def raycast_fragments(mesh: trimesh.Trimesh, camera: PinholeCamera) -> Fragments:
    """Reference for `rasterize`: the first hit of one ray per pixel centre, through trimesh's ray caster."""
    origins, directions = camera.pixel_rays()
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    locations, ray_index, face_index = mesh.ray.intersects_location(origins, directions, multiple_hits=False)
    num_pixels = camera.height * camera.width
    faces = np.full(num_pixels, -1, dtype=np.int64)
    barycentric = np.zeros((num_pixels, 3))
    depth = np.full(num_pixels, np.inf)
    if len(ray_index):
        faces[ray_index] = face_index
        barycentric[ray_index] = trimesh.triangles.points_to_barycentric(mesh.triangles[face_index], locations)
        depth[ray_index] = -((locations - camera.camera_to_world[:3, 3]) @ camera.camera_to_world[:3, 2])
    shape = (camera.height, camera.width)
    return Fragments(
        face_index=torch.from_numpy(faces.reshape(shape)),
        barycentric=torch.from_numpy(barycentric.reshape(shape + (3,))),
        depth=torch.from_numpy(depth.reshape(shape)),
    )


def interpolate_vertex_attribute(
    attribute: Float[Tensor, "num_vertices channels"], faces: Int[Tensor, "num_faces 3"], fragments: Fragments
) -> Float[Tensor, "H W channels"]:
    """`sum_k b_k a(v_k)` over the corners of each pixel's face (0 where the pixel is empty)."""
    face_index = fragments.face_index.clamp(min=0)
    corner_values = attribute[faces[face_index]]  # [H, W, 3, C]
    values = (fragments.barycentric[..., None] * corner_values).sum(dim=-2)
    return values * fragments.mask[..., None]


def shade(
    fragments: Fragments,
    faces: Int[Tensor, "num_faces 3"],
    vertex_normals: Float[Tensor, "num_vertices 3"],
    camera: PinholeCamera,
    mode: MeshColors = "shaded",
    vertex_colors: Optional[Float[Tensor, "num_vertices 3"]] = None,
    background: Union[float, Tuple[float, float, float]] = 0.0,
    albedo: float = 0.8,
    ambient: float = 0.25,
) -> Float[Tensor, "H W 3"]:
    """Colour of each pixel from its fragment.

    "shaded": `albedo (ambient + (1 - ambient) |n . l|)` with the light at the camera (`l` from the point to
    the camera) and the interpolated vertex normal `n`, so both sides of a sheet are lit; "vertex": the same
    with the interpolated vertex colour as albedo; "normal": `(n + 1) / 2`, the models' `normal` convention.
    """
    dtype = fragments.barycentric.dtype
    normals = interpolate_vertex_attribute(vertex_normals.to(dtype), faces, fragments)
    normals = torch.nn.functional.normalize(normals, dim=-1)
    if mode == "normal":
        colors = (normals + 1.0) / 2.0
    else:
        _, directions = camera.pixel_rays()
        to_camera = -torch.as_tensor(directions, dtype=dtype, device=normals.device)
        lambert = (normals * to_camera).sum(dim=-1, keepdim=True).abs()
        if mode == "vertex":
            if vertex_colors is None:
                raise ValueError("mode 'vertex' needs vertex colours")
            surface_albedo = interpolate_vertex_attribute(vertex_colors.to(dtype), faces, fragments)
        else:
            surface_albedo = torch.full_like(normals, albedo)
        colors = surface_albedo * (ambient + (1.0 - ambient) * lambert)
    background_color = torch.as_tensor(background, dtype=dtype, device=colors.device).expand(3)
    return torch.where(fragments.mask[..., None], colors, background_color)


class MeshRenderer:
    """A mesh held as tensors, rendered from any number of cameras."""

    def __init__(self, mesh: trimesh.Trimesh, device: Union[str, torch.device] = "cpu") -> None:
        self.vertices = torch.as_tensor(np.array(mesh.vertices), dtype=torch.float64, device=device)
        self.faces = torch.as_tensor(np.array(mesh.faces), dtype=torch.long, device=device)
        self.vertex_normals = torch.as_tensor(np.array(mesh.vertex_normals), dtype=torch.float64, device=device)
        self.vertex_colors: Optional[Tensor] = None
        if mesh.visual.kind == "vertex":
            rgba = np.asarray(mesh.visual.vertex_colors, dtype=np.float64) / 255.0
            self.vertex_colors = torch.as_tensor(rgba[:, :3], device=device)

    def render(
        self,
        camera: PinholeCamera,
        mode: MeshColors = "shaded",
        background: Union[float, Tuple[float, float, float]] = 0.0,
    ) -> Float[Tensor, "H W 3"]:
        """The mesh seen by `camera`, colours in [0, 1]."""
        fragments = rasterize(self.vertices, self.faces, camera)
        return shade(fragments, self.faces, self.vertex_normals, camera, mode, self.vertex_colors, background)
