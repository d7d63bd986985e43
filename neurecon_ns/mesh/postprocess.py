"""What is done to an extracted mesh before it is written: culling by cameras and masks, keeping the largest
component, changing its space, exporting it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import trimesh
from jaxtyping import Bool, Float, Int
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from neurecon_ns.errors import UserInputError

MESH_SUFFIXES = (".ply", ".obj", ".glb")


def keep_largest_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The connected component (faces joined through shared vertices) with the most faces."""
    if len(mesh.faces) == 0:
        return mesh.copy()
    edges = np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]]])
    ones = np.ones(len(edges), dtype=np.int8)
    adjacency = coo_matrix((ones, (edges[:, 0], edges[:, 1])), shape=(len(mesh.vertices),) * 2)
    _, vertex_component = connected_components(adjacency, directed=False)
    face_component = vertex_component[mesh.faces[:, 0]]
    largest = np.argmax(np.bincount(face_component))
    return submesh(mesh, face_component == largest)


def submesh(mesh: trimesh.Trimesh, face_mask: Bool[np.ndarray, " num_faces"]) -> trimesh.Trimesh:
    """The faces in `face_mask` with the vertices they use (vertex colours and metadata carried along)."""
    faces = mesh.faces[face_mask]
    used = np.unique(faces)
    remap = np.full(len(mesh.vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    vertex_colors = None
    if mesh.visual.kind == "vertex":
        vertex_colors = np.asarray(mesh.visual.vertex_colors)[used]
    result = trimesh.Trimesh(mesh.vertices[used], remap[faces], vertex_colors=vertex_colors, process=False)
    result.metadata.update(mesh.metadata)
    return result


def transform_mesh(mesh: trimesh.Trimesh, matrix: Float[np.ndarray, "4 4"]) -> trimesh.Trimesh:
    """A copy with vertices mapped by the homogeneous `matrix` (faces flipped if it mirrors, keeping normals outward)."""
    result = mesh.copy()
    result.apply_transform(np.asarray(matrix, dtype=np.float64))
    return result


def dilate_mask(mask: Bool[np.ndarray, "H W"], radius_px: float) -> Bool[np.ndarray, "H W"]:
    """Pixels within `radius_px` (Euclidean) of the mask: dilation by a disk."""
    mask = np.asarray(mask, dtype=bool)
    if radius_px <= 0 or not mask.any():
        return mask
    return ndimage.distance_transform_edt(~mask) <= radius_px


def project_points(
    points: Float[np.ndarray, "num 3"], intrinsics: Float[np.ndarray, "3 3"], c2w_opencv: Float[np.ndarray, "3or4 4"]
) -> Tuple[Float[np.ndarray, "num 2"], Float[np.ndarray, " num"]]:
    """Image coordinates `(x, y)` and depth `z` of points seen by an OpenCV camera (x right, y down, z forward).

    With `c2w = [R | t]`: `p_cam = R^T (p - t)`, `(x, y) = (K p_cam)_{xy} / z`.
    """
    rotation, center = c2w_opencv[:3, :3], c2w_opencv[:3, 3]
    points_camera = (points - center) @ rotation
    depth = points_camera[:, 2]
    projected = points_camera @ np.asarray(intrinsics).T
    with np.errstate(divide="ignore", invalid="ignore"):
        pixels = projected[:, :2] / depth[:, None]
    return pixels, depth


def visible_vertices(
    vertices: Float[np.ndarray, "num_vertices 3"],
    intrinsics: Float[np.ndarray, "num_views 3 3"],
    c2w_opencv: Float[np.ndarray, "num_views 4 4"],
    image_sizes: Union[Tuple[int, int], Int[np.ndarray, "num_views 2"]],
    masks: Optional[Sequence[Bool[np.ndarray, "H W"]]] = None,
    dilation_px: float = 0.0,
    min_views: int = 1,
    pixel_centers_at_integers: bool = False,
) -> Bool[np.ndarray, " num_vertices"]:
    """Vertices the cameras vouch for.

    A vertex is seen by a view when it lies in front of the camera and projects inside the image. It is kept
    when at least `min_views` views see it and, if masks are given, it falls inside the mask (dilated by
    `dilation_px` pixels) of every view that sees it: the visual-hull rule of the usual DTU evaluation (which
    uses `min_views=0`).

    Pixel `(u, v)` covers image coordinates `[u, u + 1) x [v, v + 1)` as in nerfstudio's cameras, or
    `[u - 1/2, u + 1/2)` with `pixel_centers_at_integers` (OpenCV, the DTU matrices).
    """
    intrinsics = np.asarray(intrinsics, dtype=np.float64).reshape(-1, 3, 3)
    c2w_opencv = np.asarray(c2w_opencv, dtype=np.float64)
    sizes = np.broadcast_to(np.asarray(image_sizes, dtype=np.int64).reshape(-1, 2), (len(intrinsics), 2))
    if masks is not None and len(masks) != len(intrinsics):
        raise UserInputError(f"{len(masks)} masks were given for {len(intrinsics)} cameras; give one mask per camera.")
    vertices = np.asarray(vertices, dtype=np.float64)
    offset = 0.5 if pixel_centers_at_integers else 0.0
    views_seeing = np.zeros(len(vertices), dtype=np.int64)
    outside_a_mask = np.zeros(len(vertices), dtype=bool)
    for view in range(len(intrinsics)):
        width, height = (int(s) for s in sizes[view])
        pixels, depth = project_points(vertices, intrinsics[view], c2w_opencv[view])
        in_front = depth > 1e-8
        column = np.floor(np.where(in_front, pixels[:, 0], -1.0) + offset)
        row = np.floor(np.where(in_front, pixels[:, 1], -1.0) + offset)
        seen = in_front & (column >= 0) & (column < width) & (row >= 0) & (row < height)
        views_seeing += seen
        if masks is not None:
            mask = np.asarray(masks[view]) > 0
            if mask.shape != (height, width):
                raise UserInputError(f"mask {view} is {mask.shape[1]}x{mask.shape[0]} but its image is {width}x{height}; masks must match the images.")
            mask = dilate_mask(mask, dilation_px)
            seen_index = np.flatnonzero(seen)
            inside = mask[row[seen_index].astype(np.int64), column[seen_index].astype(np.int64)]
            outside_a_mask[seen_index[~inside]] = True
    return (views_seeing >= min_views) & ~outside_a_mask


def cull_by_cameras(
    mesh: trimesh.Trimesh,
    intrinsics: Float[np.ndarray, "num_views 3 3"],
    c2w_opencv: Float[np.ndarray, "num_views 4 4"],
    image_sizes: Union[Tuple[int, int], Int[np.ndarray, "num_views 2"]],
    masks: Optional[Sequence[Bool[np.ndarray, "H W"]]] = None,
    dilation_px: float = 0.0,
    min_views: int = 1,
    pixel_centers_at_integers: bool = False,
) -> trimesh.Trimesh:
    """The faces whose three vertices pass `visible_vertices` (same arguments; cameras in the mesh's space).

    Cameras are OpenCV camera-to-world matrices; from nerfstudio's OpenGL `camera_to_worlds` use
    `c2w @ diag(1, -1, -1, 1)`. `image_sizes` are `(width, height)`, one per view or one for all; masks are
    `(height, width)` arrays, nonzero inside.
    """
    keep_vertex = visible_vertices(
        mesh.vertices, intrinsics, c2w_opencv, image_sizes, masks, dilation_px, min_views, pixel_centers_at_integers
    )
    return submesh(mesh, keep_vertex[mesh.faces].all(axis=1))


def check_mesh_path(path: Union[str, Path]) -> Path:
    """The output path, if its suffix is a mesh format trimesh writes."""
    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise UserInputError(f"{path}: unknown mesh format '{path.suffix}'; end the output path with one of {', '.join(MESH_SUFFIXES)}.")
    return path


def export_mesh(mesh: trimesh.Trimesh, path: Union[str, Path]) -> Path:
    """Write `.ply`, `.obj` or `.glb` (chosen by the suffix), creating the folder."""
    path = check_mesh_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path)
    return path
