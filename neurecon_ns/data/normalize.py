"""Putting the region of interest of any capture into the unit sphere the surface models train in.

nerfstudio's data parsers hand over cameras in their own normalisation (`nerfstudio-data` and
`colmap`: oriented, centred on the cameras and scaled into [-1, 1]^3; `blender-data`: the Blender
scene's units). The models of this plugin reconstruct what lies inside the unit sphere and
explain everything outside with the background. A similarity `x_unit = (x - c) / rho` moves a sphere
of centre `c` and radius `rho` (the region of interest, in the parser's space) onto the unit sphere:

- from the cameras (`region_from_cameras`): `c` is the point nearest to all optical axes in the
  least-squares sense (the point an orbit of photos looks at), `rho` the radius of the largest
  sphere around `c` that 90% of the views see whole (its distance to the side planes of each
  camera's viewing frustum), so an object framed in the photos lies inside;
- from sparse points (`region_from_points`, when the parser gives `points3D_xyz`): the points that
  at least 90% of the cameras have in view are the object (the walls behind it are seen by some
  cameras only); `c` and `rho` enclose them, with a 10% margin;
- from a box the user gives (`region_from_box`), in the data's own units.

The similarity is composed into the parser's `dataparser_transform` / `dataparser_scale`, so
`dataparser_transforms.json` and every mesh export map back to the data's own units.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.scene_box import SceneBox

from neurecon_ns.errors import UserInputError

VIEW_FRACTION = 0.9
"""Share of the cameras that must see the region of interest whole (cameras) or a point (points)."""
POINTS_MARGIN = 1.1
"""The sphere fitted to the sparse points is enlarged by this factor."""
MIN_AXIS_SPREAD = 1e-3
"""Below this mean squared sine between the optical axes and their common direction (about 2 degrees of
spread) the axes are taken as parallel: the cameras look at no common point."""


@dataclass
class SphereRegion:
    """A sphere in a data parser's space that becomes the unit sphere of the training space."""

    center: Float[np.ndarray, "3"]
    """Centre `c`."""
    radius: float
    """Radius `rho`."""
    source: str
    """How it was found: "cameras", "points", "box" or "data" (the parser's own unit sphere)."""


@dataclass
class PinholeViews:
    """Cameras as arrays: OpenGL camera-to-world matrices and pinhole intrinsics."""

    c2w: Float[np.ndarray, "num_cameras 3 4"]
    fx: Float[np.ndarray, " num_cameras"]
    fy: Float[np.ndarray, " num_cameras"]
    cx: Float[np.ndarray, " num_cameras"]
    cy: Float[np.ndarray, " num_cameras"]
    width: Float[np.ndarray, " num_cameras"]
    height: Float[np.ndarray, " num_cameras"]

    @classmethod
    def from_cameras(cls, cameras: Cameras) -> "PinholeViews":
        def column(values) -> np.ndarray:
            return values.detach().cpu().double().numpy().reshape(-1)

        return cls(
            c2w=cameras.camera_to_worlds.detach().cpu().double().numpy().reshape(-1, 3, 4),
            fx=column(cameras.fx),
            fy=column(cameras.fy),
            cx=column(cameras.cx),
            cy=column(cameras.cy),
            width=column(cameras.width),
            height=column(cameras.height),
        )

    @property
    def centers(self) -> Float[np.ndarray, "num_cameras 3"]:
        return self.c2w[:, :, 3]

    @property
    def optical_axes(self) -> Float[np.ndarray, "num_cameras 3"]:
        """Unit viewing directions (OpenGL cameras look down their -z axis)."""
        axes = -self.c2w[:, :, 2]
        return axes / np.linalg.norm(axes, axis=-1, keepdims=True)


def closest_point_to_lines(
    origins: Float[np.ndarray, "num_lines 3"], directions: Float[np.ndarray, "num_lines 3"]
) -> Tuple[Float[np.ndarray, "3"], float]:
    """`c = argmin_p sum_i |(I - d_i d_i^T)(p - o_i)|^2`, from `(sum_i P_i) c = sum_i P_i o_i`, and the spread
    `lambda_min(sum_i P_i) / N` of the unit directions `d_i` (0 when they are all parallel)."""
    directions = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    projectors = np.eye(3)[None] - directions[:, :, None] * directions[:, None, :]
    normal_matrix = projectors.sum(axis=0)
    spread = float(np.linalg.eigvalsh(normal_matrix)[0]) / len(origins)
    if spread < 1e-12:
        return origins.mean(axis=0), spread
    center = np.linalg.solve(normal_matrix, np.einsum("nij,nj->i", projectors, origins))
    return center, spread


def frustum_inscribed_radii(center: Float[np.ndarray, "3"], views: PinholeViews) -> Float[np.ndarray, " num_cameras"]:
    """Radius of the largest sphere around `center` inside each camera's viewing frustum.

    In OpenGL camera coordinates `q` (depth `-q_z`) the four side planes pass through the camera centre with
    inward normals `(f_x, 0, -c_x)`, `(-f_x, 0, -(W - c_x))`, `(0, -f_y, -c_y)` and `(0, f_y, -(H - c_y))` (pixel
    rows grow downward); the radius is the smallest signed distance `n . q` to them, negative when the
    centre is out of view. Lens distortion is ignored.
    """
    rotation = views.c2w[:, :, :3]
    local = np.einsum("nji,nj->ni", rotation, center[None] - views.centers)
    zeros = np.zeros_like(views.fx)
    normals = np.stack(
        [
            np.stack([views.fx, zeros, -views.cx], axis=-1),
            np.stack([-views.fx, zeros, -(views.width - views.cx)], axis=-1),
            np.stack([zeros, -views.fy, -views.cy], axis=-1),
            np.stack([zeros, views.fy, -(views.height - views.cy)], axis=-1),
        ],
        axis=1,
    )
    normals = normals / np.linalg.norm(normals, axis=-1, keepdims=True)
    return np.einsum("nkj,nj->nk", normals, local).min(axis=-1)


def region_from_cameras(views: PinholeViews, where: str) -> SphereRegion:
    """The sphere around the cameras' look-at point that `VIEW_FRACTION` of the views see whole."""
    center, spread = closest_point_to_lines(views.centers, views.optical_axes)
    if len(views.c2w) < 2 or spread < MIN_AXIS_SPREAD:
        raise UserInputError(
            f"{where}: the cameras' optical axes are (nearly) parallel, so they do not surround any common region; "
            "capture the object from around it, or give its bounding box with --pipeline.datamanager.roi box "
            "--pipeline.datamanager.roi-box XMIN YMIN ZMIN XMAX YMAX ZMAX."
        )
    radii = frustum_inscribed_radii(center, views)
    seeing = radii > 0
    if seeing.mean() < VIEW_FRACTION:
        raise UserInputError(
            f"{where}: the cameras do not surround a common region ({int((~seeing).sum())} of {len(radii)} do not "
            f"see the point their optical axes pass nearest, {np.round(center, 3).tolist()}); capture the object "
            "from around it, or give its bounding box with --pipeline.datamanager.roi box "
            "--pipeline.datamanager.roi-box XMIN YMIN ZMIN XMAX YMAX ZMAX."
        )
    radius = float(np.quantile(radii, 1.0 - VIEW_FRACTION))
    return SphereRegion(center=center, radius=radius, source="cameras")


def points_in_view(points: Float[np.ndarray, "num_points 3"], views: PinholeViews) -> Float[np.ndarray, " num_points"]:
    """Share of the cameras that have each point in front of them and inside their image."""
    counts = np.zeros(len(points))
    for c2w, fx, fy, cx, cy, width, height in zip(views.c2w, views.fx, views.fy, views.cx, views.cy, views.width, views.height):
        local = (points - c2w[:, 3]) @ c2w[:, :3]
        depth = -local[:, 2]
        in_front = depth > 1e-9
        safe_depth = np.where(in_front, depth, 1.0)
        u = cx + fx * local[:, 0] / safe_depth
        v = cy - fy * local[:, 1] / safe_depth
        counts += in_front & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    return counts / len(views.c2w)


def region_from_points(points: Float[np.ndarray, "num_points 3"], views: PinholeViews, where: str) -> SphereRegion:
    """The sphere, with a 10% margin, around the sparse points that `VIEW_FRACTION` of the cameras see."""
    seen = points[points_in_view(points, views) >= VIEW_FRACTION]
    if len(seen) < 10:
        raise UserInputError(
            f"{where}: only {len(seen)} of the {len(points)} sparse points are in view of {VIEW_FRACTION:.0%} of the "
            "cameras, too few to find the object; use --pipeline.datamanager.roi cameras or give its bounding box "
            "with --pipeline.datamanager.roi box --pipeline.datamanager.roi-box XMIN YMIN ZMIN XMAX YMAX ZMAX."
        )
    low, high = np.quantile(seen, 0.02, axis=0), np.quantile(seen, 0.98, axis=0)
    center = 0.5 * (low + high)
    radius = POINTS_MARGIN * float(np.quantile(np.linalg.norm(seen - center, axis=-1), 0.98))
    return SphereRegion(center=center, radius=radius, source="points")


def region_from_box(
    box: Sequence[float], data_to_parser: Float[np.ndarray, "3 4"], parser_scale: float, where: str
) -> SphereRegion:
    """The sphere through the corners of the box `(xmin, ymin, zmin, xmax, ymax, zmax)` given in the data's
    own units, carried into the parser's space `x = scale * (T @ [x_data, 1])` (a similarity)."""
    if len(box) != 6:
        raise UserInputError(f"{where}: --pipeline.datamanager.roi-box takes 6 numbers XMIN YMIN ZMIN XMAX YMAX ZMAX, got {len(box)}.")
    low, high = np.asarray(box[:3], dtype=np.float64), np.asarray(box[3:], dtype=np.float64)
    if not np.all(high > low):
        raise UserInputError(f"{where}: --pipeline.datamanager.roi-box {list(box)} is empty; give XMIN YMIN ZMIN XMAX YMAX ZMAX with each max above its min.")
    linear = parser_scale * data_to_parser[:, :3]
    center = linear @ (0.5 * (low + high)) + parser_scale * data_to_parser[:, 3]
    # a similarity scales every length alike: the cube root of its determinant
    length_scale = abs(np.linalg.det(linear)) ** (1.0 / 3.0)
    return SphereRegion(center=center, radius=float(0.5 * np.linalg.norm(high - low) * length_scale), source="box")


def check_cameras_outside(camera_centers_unit: Float[np.ndarray, "num_cameras 3"], where: str, fix: str) -> None:
    """Every camera must stand outside the unit sphere: the models assume free space between camera and object."""
    distances = np.linalg.norm(camera_centers_unit, axis=-1)
    inside = np.nonzero(distances <= 1.0)[0]
    if len(inside):
        raise UserInputError(
            f"{where}: camera {inside[0]} lies inside the region of interest (at {distances[inside[0]]:.2f} of its radius "
            f"from the centre; {len(inside)} of {len(distances)} cameras are inside); {fix}"
        )


def scale_region(region: SphereRegion, factor: float) -> SphereRegion:
    return dataclasses.replace(region, radius=region.radius * factor)


def to_unit_sphere(outputs: DataparserOutputs, region: SphereRegion) -> DataparserOutputs:
    """The parser's outputs with `x_unit = (x - c) / rho` applied to cameras and sparse points and composed into
    `dataparser_transform` / `dataparser_scale` (`x_unit = scale' * (T' @ [x_data, 1])`,
    `T' = T - [0 | c / scale]`, `scale' = scale / rho`)."""
    center = torch.as_tensor(region.center, dtype=torch.float32)
    cameras = copy.deepcopy(outputs.cameras)
    c2w = cameras.camera_to_worlds.clone()
    c2w[..., :3, 3] = (c2w[..., :3, 3] - center) / region.radius
    cameras.camera_to_worlds = c2w

    metadata = dict(outputs.metadata)
    if metadata.get("points3D_xyz") is not None:
        metadata["points3D_xyz"] = (torch.as_tensor(metadata["points3D_xyz"]) - center) / region.radius
    transform = outputs.dataparser_transform.clone().double()[:3, :]
    transform[:, 3] -= center.double() / outputs.dataparser_scale
    scale = outputs.dataparser_scale / region.radius
    data_to_unit = np.eye(4)
    data_to_unit[:3, :] = scale * transform.numpy()
    metadata["unit_to_data"] = np.linalg.inv(data_to_unit).tolist()
    metadata["region_of_interest"] = {
        "center": np.asarray(region.center).tolist(),
        "radius": region.radius,
        "source": region.source,
    }
    return dataclasses.replace(
        outputs,
        cameras=cameras,
        metadata=metadata,
        scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])),
        dataparser_transform=transform.float(),
        dataparser_scale=float(scale),
    )


def data_to_parser_transform(outputs: DataparserOutputs) -> Tuple[np.ndarray, float]:
    """nerfstudio's `(T [3, 4], scale)` of the parser, `x_parser = scale * (T @ [x_data, 1])`."""
    return outputs.dataparser_transform.detach().cpu().double().numpy()[:3, :], float(outputs.dataparser_scale)


def find_region(
    outputs: DataparserOutputs, mode: str, box: Optional[Sequence[float]], where: str
) -> SphereRegion:
    """The region of interest of a parser's training outputs for `mode` in auto/data/cameras/points/box."""
    if mode == "auto":
        if "unit_to_data" in outputs.metadata:
            mode = "data"
        elif outputs.metadata.get("points3D_xyz") is not None:
            mode = "points"
        else:
            mode = "cameras"
    if mode == "data":
        return SphereRegion(center=np.zeros(3), radius=1.0, source="data")
    if mode == "box":
        if box is None:
            raise UserInputError(f"{where}: --pipeline.datamanager.roi box needs --pipeline.datamanager.roi-box XMIN YMIN ZMIN XMAX YMAX ZMAX (data units).")
        transform, scale = data_to_parser_transform(outputs)
        return region_from_box(box, transform, scale, where)
    views = PinholeViews.from_cameras(outputs.cameras)
    if mode == "points":
        points = outputs.metadata.get("points3D_xyz")
        if points is None:
            raise UserInputError(f"{where}: --pipeline.datamanager.roi points, but the data parser gave no sparse points; use 'roi cameras' or 'roi box'.")
        return region_from_points(torch.as_tensor(points).double().numpy(), views, where)
    return region_from_cameras(views, where)
