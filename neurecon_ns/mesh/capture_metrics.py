"""Measures of a reconstructed mesh that need no true surface: what a real capture offers is its photographs,
masks and cameras.

- `silhouette_ious`: the mesh rasterised from every camera (`render/rasterize.py`) against the view's mask,
  intersection over union of the two pixel sets.
- `seen_faces` / `seen_part`: the faces that at least one camera sees (turned towards it, not edge-on, and not
  hidden behind the mesh itself), to compare two surfaces where the photographs say something about them, as
  DTU's evaluation does.
- `signed_offsets` (for a synthetic capture whose exact surface is known): which side of it, and how far, a
  reconstruction lies, point by point.
- `normal_deviation` / `surface_noise`: how far the mesh bends within a small neighbourhood. At a vertex `v`,
  the points of the mesh within `radius` of it are fitted by a plane (least squares: the normal is the
  eigenvector of the smallest eigenvalue of their covariance), and the deviation is the angle between that
  plane's normal and the mesh's own vertex normal at `v` (area-weighted mean of the faces around it).

  On a smooth surface the fitted plane is the tangent plane to first order: a sphere of radius `R`, a
  cylinder, a saddle all give angles of order `(radius / R)^2`, near zero. Ripples, grooves and wrinkles
  whose wavelength is shorter than the patch tilt the faces around `v` against the fitted plane and raise
  it: a surface rippling with amplitude `a` and wavelength `L` tilts its normals by up to `atan(2 pi a / L)`.
  `surface_noise` is the median over vertices: genuine sharp edges and corners deviate too, but they hold a
  small share of the vertices, and the median ignores them. The radius is chosen relative to the object
  (`noise_radius`: 2.5% of its bounding-box diagonal, a few millimetres on a DTU object), so the figure does
  not depend on the data's units.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import trimesh
from jaxtyping import Bool, Float
from scipy.spatial import cKDTree

from neurecon_ns.mesh.evaluate import sample_surface
from neurecon_ns.mesh.postprocess import submesh
from neurecon_ns.render.rasterize import PinholeCamera, project_to_pixels, rasterize

NOISE_RADIUS_FRACTION = 0.025
"""Patch radius of `surface_noise`, as a fraction of the mesh's bounding-box diagonal."""
SEEN_MIN_FACING = 0.1
"""`seen_faces`: a camera sees a face within acos(0.1) = 84 degrees of its normal, not nearer edge-on."""


def mask_iou(predicted: Bool[np.ndarray, "H W"], reference: Bool[np.ndarray, "H W"]) -> float:
    """`|P and R| / |P or R|` of two pixel sets (1 when both are empty)."""
    union = np.logical_or(predicted, reference).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(predicted, reference).sum() / union)


def silhouette(mesh: trimesh.Trimesh, camera: PinholeCamera) -> Bool[np.ndarray, "H W"]:
    """Pixels whose centre the mesh covers, seen by `camera` (mesh and camera in the same space)."""
    vertices = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float64)
    faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long)
    return rasterize(vertices, faces, camera).mask.numpy()


def silhouette_ious(
    mesh: trimesh.Trimesh, cameras: Sequence[PinholeCamera], masks: Sequence[Bool[np.ndarray, "H W"]]
) -> Float[np.ndarray, " num_views"]:
    """Per view: IoU of the mesh's silhouette with the view's mask."""
    return np.array([mask_iou(silhouette(mesh, camera), mask) for camera, mask in zip(cameras, masks)])


def seen_faces(
    mesh: trimesh.Trimesh, cameras: Sequence[PinholeCamera], tolerance_px: float = 3.0, min_facing: float = SEEN_MIN_FACING
) -> Bool[np.ndarray, " num_faces"]:
    """Faces that some camera sees: the face turned towards the camera (the cosine between its normal and the
    direction to the camera at least `min_facing`) and one of its vertices in front of the camera, inside the image
    and no farther than the depth the mesh's own rasterisation holds at that pixel plus `tolerance_px` pixel
    footprints (`depth / fx` each). A face only ever seen edge-on is not seen: its pixels say nothing about where
    it lies along its normal."""
    vertices = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float64)
    faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long)
    face_normals = torch.as_tensor(np.asarray(mesh.face_normals), dtype=torch.float64)
    face_centres = vertices[faces].mean(dim=1)
    seen = torch.zeros(len(faces), dtype=torch.bool)
    for camera in cameras:
        depth_buffer = rasterize(vertices, faces, camera).depth.to(torch.float64)
        pixels, depth = project_to_pixels(vertices, camera)
        columns, rows = torch.floor(pixels[:, 0]).long(), torch.floor(pixels[:, 1]).long()
        inside = (depth > 0) & (columns >= 0) & (columns < camera.width) & (rows >= 0) & (rows < camera.height)
        nearest = torch.full_like(depth, -float("inf"))
        nearest[inside] = depth_buffer[rows[inside], columns[inside]]
        visible_vertex = inside & (depth <= nearest + tolerance_px * depth / camera.fx)
        to_camera = torch.nn.functional.normalize(torch.as_tensor(camera.camera_to_world[:3, 3]) - face_centres, dim=-1)
        facing = (face_normals * to_camera).sum(dim=-1) >= min_facing
        seen |= facing & visible_vertex[faces].any(dim=1)
    return seen.numpy()


def seen_part(mesh: trimesh.Trimesh, cameras: Sequence[PinholeCamera], tolerance_px: float = 3.0) -> trimesh.Trimesh:
    """The faces of `seen_faces` as a mesh."""
    return submesh(mesh, seen_faces(mesh, cameras, tolerance_px))


def signed_offsets(
    points: Float[np.ndarray, "num_points 3"], reference: trimesh.Trimesh, num_reference_points: int = 200_000, seed: int = 0
) -> Float[np.ndarray, " num_points"]:
    """How far each point stands off a reference surface along the reference's outward normal: positive where a
    reconstruction stands proud of it, negative where it lies inside. Measured to the nearest of
    `num_reference_points` points drawn on the reference by area (so within about their spacing squared over
    the distance of the exact value, on a face)."""
    reference_points, reference_normals = sample_surface(reference, num_reference_points, seed)
    _, nearest = cKDTree(reference_points).query(points)
    return ((points - reference_points[nearest]) * reference_normals[nearest]).sum(axis=-1)


def noise_radius(mesh: trimesh.Trimesh, fraction: float = NOISE_RADIUS_FRACTION) -> float:
    """`fraction` of the diagonal of the mesh's axis-aligned bounding box."""
    return float(fraction * np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))


def normal_deviation(
    mesh: trimesh.Trimesh,
    radius: float,
    max_vertices: Optional[int] = 20_000,
    min_neighbours: int = 6,
    seed: int = 0,
) -> Float[np.ndarray, " num_sampled"]:
    """Angles in degrees between the vertex normal and the normal of the plane fitted to the vertices within
    `radius` (Euclidean), at up to `max_vertices` vertices drawn at random (all of them if None); vertices
    with fewer than `min_neighbours` neighbours (loose fragments, a mesh coarser than the radius) are left out."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    normals = np.asarray(mesh.vertex_normals, dtype=np.float64)
    chosen = np.arange(len(vertices))
    if max_vertices is not None and len(vertices) > max_vertices:
        chosen = np.random.default_rng(seed).choice(len(vertices), max_vertices, replace=False)
    tree = cKDTree(vertices)
    angles = []
    for index, neighbours in zip(chosen, tree.query_ball_point(vertices[chosen], radius)):
        if len(neighbours) < min_neighbours:
            continue
        patch = vertices[neighbours]
        centred = patch - patch.mean(axis=0)
        _, eigenvectors = np.linalg.eigh(centred.T @ centred)
        plane_normal = eigenvectors[:, 0]
        cosine = abs(float(plane_normal @ normals[index]))
        angles.append(np.degrees(np.arccos(min(cosine, 1.0))))
    return np.asarray(angles)


def surface_noise(mesh: trimesh.Trimesh, radius: Optional[float] = None, **kwargs) -> float:
    """Median of `normal_deviation` in degrees (radius: `noise_radius(mesh)` unless given)."""
    angles = normal_deviation(mesh, noise_radius(mesh) if radius is None else radius, **kwargs)
    return float(np.median(angles)) if len(angles) else float("nan")
