"""Procedural scenes with exact geometry: posed images, masks, cameras and the true surface mesh.

A shape from `shapes.py` is rendered by sphere tracing its analytic SDF in the unit-sphere space,
one ray per pixel through the pixel centre, with a smooth procedural albedo and view-independent
Lambertian shading. The scene is written in a *world* frame that differs from the unit-sphere
space by a similarity, as DTU does:

    x_world = scale_mat[:3, :3] @ x_unit + scale_mat[:3, 3],   scale_mat = [[s I, T], [0, 1]]

so a loader that forgets `scale_mat` fails visibly. Conventions:

- Pixel (u, v) is column u, row v and covers [u, u+1) x [v, v+1); its ray goes through
  (u + 0.5, v + 0.5), as nerfstudio's `Cameras.generate_rays` does. The principal point is the
  image centre (cx, cy) = (W / 2, H / 2) and fx = fy.
- NeuS/IDR matrices are OpenCV (x right, y down, z forward); nerfstudio and Blender matrices are
  OpenGL (x right, y up, z back): the y and z columns of the camera-to-world rotation are negated.
- +z is up in the unit-sphere space; cameras look at the origin from 2.5 to 3 units away.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from jaxtyping import Bool, Float, UInt8
from PIL import Image

from neurecon_ns.data.conventions import flip_camera_axes
from neurecon_ns.data.shapes import DEFAULT_SHAPE, Array, Shape, _as_like, _xp, get_shape, sdf_gradient, surface_mesh
from neurecon_ns.errors import UserInputError

BACKGROUNDS = ("black", "white", "environment")
FORMATS = ("neus", "nerfstudio", "blender")
DEFAULT_WORLD_SCALE = 37.5
DEFAULT_WORLD_TRANSLATION = (12.0, -7.0, 30.0)
CAMERA_DISTANCE_RANGE = (2.5, 3.0)
ELEVATION_RANGE_DEG = (-15.0, 75.0)
LIGHT_DIRECTION_UNIT = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
AMBIENT = 0.5
LAYOUTS = ("orbit", "dtu")
DTU_NUM_VIEWS = 49
DTU_DISTANCE_RANGE = (3.95, 4.17)
"""Camera distances from the object's centre in DTU's scans, in units of the unit sphere around the object
(scan 65: 3.95 to 4.17, 671 mm on average at 164.6 mm per unit)."""
DTU_FOCAL_PER_WIDTH = 723.08 / 400.0
"""DTU's focal length in pixels per pixel of image width (2892 at 1600x1200, 723 at 400x300)."""
DTU_CAP_HALF_ANGLE_DEG = 54.0
"""The 49 DTU cameras lie within this angle of their mean direction (scan 65: 5 to 54 degrees from it)."""
DTU_CAP_ELEVATION_DEG = 45.0
"""Elevation of the cap's axis above the object's horizontal plane: the robot looks at the table from above."""
DTU_WORLD_SCALE = 164.6
DTU_WORLD_TRANSLATION = (-28.1, -28.0, 640.4)
"""scan 65's scale_mat: a unit of the unit sphere is 164.6 mm, so the scene's world units are DTU's millimetres."""
BLENDER_SCALE = 1.5
"""x_blender = 1.5 x_unit: the object (radius < 0.7) then spans about [-1, 1] and the cameras sit
3.75 to 4.5 from the origin, as in the Blender scenes nerfstudio's parser expects ([-1.5, 1.5]^3)."""



# ---------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------


def similarity_matrix(scale: float, translation: Sequence[float]) -> Float[np.ndarray, "4 4"]:
    """scale_mat = [[s I, T], [0, 1]]: maps unit-sphere points to world points."""
    scale_mat = np.eye(4)
    scale_mat[:3, :3] *= scale
    scale_mat[:3, 3] = translation
    return scale_mat


def look_at_opencv(
    position: Float[np.ndarray, "3"], target: Float[np.ndarray, "3"], roll_rad: float = 0.0
) -> Float[np.ndarray, "4 4"]:
    """OpenCV camera-to-world looking from `position` at `target` with +z up.

    Columns of R: x = f x up (right), y = f x x (down), z = f (forward), then rolled by `roll_rad`
    about f.
    """
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    cos_roll, sin_roll = np.cos(roll_rad), np.sin(roll_rad)
    right, down = cos_roll * right + sin_roll * down, -sin_roll * right + cos_roll * down
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, position
    return c2w


def camera_poses_unit(num_views: int, seed: int = 0) -> Float[np.ndarray, "num_views 4 4"]:
    """OpenCV camera-to-world matrices in the unit-sphere space, deterministic in `seed`.

    Directions form a Fibonacci lattice on the band of elevations ELEVATION_RANGE_DEG (even
    coverage, mostly the upper hemisphere), rotated by a random azimuth; each camera gets a distance
    in CAMERA_DISTANCE_RANGE, a look-at point jittered by ~0.03 around the origin and a roll of up
    to 5 degrees.
    """
    rng = np.random.default_rng(seed)
    sin_low, sin_high = np.sin(np.deg2rad(ELEVATION_RANGE_DEG))
    azimuth_offset = rng.uniform(0.0, 2.0 * np.pi)
    golden_angle = np.pi * (3.0 - np.sqrt(5.0))
    poses = []
    for index in range(num_views):
        sin_elevation = sin_low + (sin_high - sin_low) * (index + 0.5) / num_views
        cos_elevation = np.sqrt(1.0 - sin_elevation**2)
        azimuth = azimuth_offset + index * golden_angle
        direction = np.array([cos_elevation * np.cos(azimuth), cos_elevation * np.sin(azimuth), sin_elevation])
        distance = rng.uniform(*CAMERA_DISTANCE_RANGE)
        target = rng.normal(0.0, 0.03, size=3)
        roll = np.deg2rad(rng.uniform(-5.0, 5.0))
        poses.append(look_at_opencv(distance * direction, target, roll))
    return np.stack(poses)


def dtu_camera_poses_unit(num_views: int = DTU_NUM_VIEWS, seed: int = 0) -> Float[np.ndarray, "num_views 4 4"]:
    """OpenCV camera-to-world matrices on DTU's sphere cap, in the unit-sphere space, deterministic in `seed`.

    Directions fill the cap of half-angle DTU_CAP_HALF_ANGLE_DEG around an axis at DTU_CAP_ELEVATION_DEG above
    the -y side of the object (a Fibonacci lattice, even in area); distances are drawn from DTU_DISTANCE_RANGE,
    each camera looks at a point within ~0.02 of the origin, with a roll of up to 3 degrees.
    """
    rng = np.random.default_rng(seed)
    elevation = np.deg2rad(DTU_CAP_ELEVATION_DEG)
    axis = np.array([0.0, -np.cos(elevation), np.sin(elevation)])
    side = np.array([1.0, 0.0, 0.0])
    up = np.cross(side, axis)
    cos_limit = np.cos(np.deg2rad(DTU_CAP_HALF_ANGLE_DEG))
    golden_angle = np.pi * (3.0 - np.sqrt(5.0))
    poses = []
    for index in range(num_views):
        cos_polar = 1.0 - (1.0 - cos_limit) * (index + 0.5) / num_views
        sin_polar = np.sqrt(1.0 - cos_polar**2)
        azimuth = index * golden_angle
        direction = cos_polar * axis + sin_polar * (np.cos(azimuth) * side + np.sin(azimuth) * up)
        distance = rng.uniform(*DTU_DISTANCE_RANGE)
        target = rng.normal(0.0, 0.02, size=3)
        roll = np.deg2rad(rng.uniform(-3.0, 3.0))
        poses.append(look_at_opencv(distance * direction, target, roll))
    return np.stack(poses)


def dtu_intrinsics_matrix(width: int, height: int) -> Float[np.ndarray, "3 3"]:
    """DTU's pinhole scaled to the image width: fx = fy = 723.08 W / 400, principal point at the image centre."""
    focal = DTU_FOCAL_PER_WIDTH * width
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def intrinsics_matrix(width: int, height: int) -> Float[np.ndarray, "3 3"]:
    """K with fx = fy chosen so the unit sphere seen from the nearest camera spans 95% of min(W, H).

    A sphere of radius 1 at distance d on the optical axis projects to a circle of radius
    f tan(asin(1 / d)) pixels; the principal point is the image centre.
    """
    nearest = CAMERA_DISTANCE_RANGE[0]
    focal = 0.95 * 0.5 * min(width, height) / np.tan(np.arcsin(1.0 / nearest))
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def pixel_rays(
    intrinsics: Float[np.ndarray, "3 3"], c2w_opencv: Float[np.ndarray, "4 4"], width: int, height: int
) -> Tuple[Float[np.ndarray, "H W 3"], Float[np.ndarray, "H W 3"]]:
    """Origins and unit directions of the rays through pixel centres.

    d ~ R K^-1 (u + 0.5, v + 0.5, 1)^T, o = camera centre; row v, column u.
    """
    rows, columns = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    directions_camera = np.stack(
        [
            (columns - intrinsics[0, 2]) / intrinsics[0, 0],
            (rows - intrinsics[1, 2]) / intrinsics[1, 1],
            np.ones_like(rows),
        ],
        -1,
    )
    directions = directions_camera @ c2w_opencv[:3, :3].T
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    origins = np.broadcast_to(c2w_opencv[:3, 3], directions.shape)
    return origins, directions


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def sphere_trace(
    shape: Shape,
    origins: Float[np.ndarray, "num_rays 3"],
    directions: Float[np.ndarray, "num_rays 3"],
    hit_tolerance: float = 1e-5,
    max_steps: int = 128,
    min_step: float = 1e-3,
) -> Tuple[Float[np.ndarray, " num_rays"], Bool[np.ndarray, " num_rays"]]:
    """First intersection t of o + t d with the zero set, for unit d and origins outside the shape.

    Marches t <- t + f(o + t d) from the shape's bounding sphere; as f is 1-Lipschitz no step
    crosses the surface, and a ray hits when f < `hit_tolerance`. Rays grazing the surface, which
    sphere tracing approaches only slowly, are then sampled every `min_step` up to the far side; a
    sign change of f between samples is refined by bisection. Only a ray whose chord through the
    solid is shorter than `min_step` can be misclassified.
    """
    radius = shape.bounding_radius * 1.02 + 1e-3
    half_b = np.einsum("ij,ij->i", origins, directions)
    discriminant = half_b**2 - (np.einsum("ij,ij->i", origins, origins) - radius**2)
    root = np.sqrt(np.maximum(discriminant, 0.0))
    t_near = np.maximum(-half_b - root, 0.0)
    t_far = -half_b + root
    t = t_near.copy()
    hit = np.zeros(len(origins), dtype=bool)
    active = np.nonzero((discriminant > 0.0) & (t_far > 0.0))[0]
    for _ in range(max_steps):
        if active.size == 0:
            break
        distance = shape.sdf(origins[active] + t[active, None] * directions[active])
        converged = distance < hit_tolerance
        hit[active[converged]] = True
        t[active] += np.where(converged, 0.0, distance)
        active = active[~converged & (t[active] <= t_far[active])]

    for chunk in np.array_split(active, int(np.ceil(active.size / 1024))) if active.size else []:
        t[chunk], hit[chunk] = _dense_search(
            shape, origins[chunk], directions[chunk], t[chunk], t_far[chunk], hit_tolerance, min_step
        )
    return t, hit


def _dense_search(
    shape: Shape,
    origins: Float[np.ndarray, "num_rays 3"],
    directions: Float[np.ndarray, "num_rays 3"],
    t_start: Float[np.ndarray, " num_rays"],
    t_end: Float[np.ndarray, " num_rays"],
    hit_tolerance: float,
    step: float,
) -> Tuple[Float[np.ndarray, " num_rays"], Bool[np.ndarray, " num_rays"]]:
    """First t in [t_start, t_end] sampled every `step` with f < hit_tolerance, refined by bisection
    when f < 0 there; rays without one miss."""
    num_samples = int(np.ceil((t_end - t_start).max() / step)) + 1
    t_samples = t_start[:, None] + step * np.arange(num_samples)
    distance = shape.sdf(origins[:, None] + t_samples[..., None] * directions[:, None])
    distance = np.where(t_samples <= t_end[:, None] + step, distance, np.inf)
    reached = distance < hit_tolerance
    hit = reached.any(-1)
    first = np.argmax(reached, -1)
    rows = np.arange(len(first))
    t_hit = t_samples[rows, first]
    crossed = hit & (distance[rows, first] < 0.0) & (first > 0)
    t_hit[crossed] = _bisect_crossing(
        shape, origins[crossed], directions[crossed], t_samples[rows, first - 1][crossed], t_hit[crossed]
    )
    return np.where(hit, t_hit, t_start), hit


def _bisect_crossing(
    shape: Shape,
    origins: Float[np.ndarray, "num_rays 3"],
    directions: Float[np.ndarray, "num_rays 3"],
    t_outside: Float[np.ndarray, " num_rays"],
    t_inside: Float[np.ndarray, " num_rays"],
    num_iterations: int = 40,
) -> Float[np.ndarray, " num_rays"]:
    """Root of f(o + t d) between t_outside (f > 0) and t_inside (f < 0); returns the outside end."""
    for _ in range(num_iterations):
        t_middle = 0.5 * (t_outside + t_inside)
        outside = shape.sdf(origins + t_middle[:, None] * directions) > 0.0
        t_outside = np.where(outside, t_middle, t_outside)
        t_inside = np.where(outside, t_inside, t_middle)
    return t_outside


def albedo(points_unit: Array) -> Array:
    """Smooth colourful texture of the 3D position (numpy or torch), values in [0.36, 0.95].

    Per channel c: h_c = 0.5 + 0.5 sin(w_c . x + phi_c) (wavelengths ~0.5), modulated by a soft 3D
    checker k = 0.6 + 0.4 tanh(3 sin(pi x / l) sin(pi y / l) sin(pi z / l)), l = 0.16:
    a_c = 0.2 + 0.75 (0.35 + 0.65 h_c) k.
    """
    xp = _xp(points_unit)
    frequencies = _as_like([[9.0, 4.0, -5.0], [-3.0, 10.0, 6.0], [5.0, -6.0, 11.0]], points_unit)
    phases = _as_like([0.3, 2.1, 4.0], points_unit)
    hue = 0.5 + 0.5 * xp.sin(points_unit @ frequencies.T + phases)
    cells = xp.sin(np.pi * points_unit / 0.16)
    checker = 0.6 + 0.4 * xp.tanh(3.0 * cells[..., 0] * cells[..., 1] * cells[..., 2])
    return 0.2 + 0.75 * (0.35 + 0.65 * hue) * checker[..., None]


def environment(directions: Float[np.ndarray, "*batch 3"]) -> Float[np.ndarray, "*batch 3"]:
    """Background radiance that depends on the ray direction only (light from infinitely far).

    A vertical sky-to-ground gradient plus coloured sine bands of the unit direction d; smooth on
    the whole sphere of directions, values in [0.05, 0.95].
    """
    up = directions[..., 2:3]
    sky = np.array([0.35, 0.55, 0.85])
    ground = np.array([0.55, 0.4, 0.25])
    gradient = 0.5 * (1.0 + up) * sky + 0.5 * (1.0 - up) * ground
    frequencies = np.array([[5.0, -3.0, 2.0], [-2.0, 6.0, 3.0], [3.0, 2.0, -7.0]])
    bands = np.sin(directions @ frequencies.T + np.array([0.5, 1.7, 3.1]))
    return np.clip(gradient + 0.2 * bands, 0.05, 0.95)


def shade(shape: Shape, points_unit: Float[np.ndarray, "num_points 3"]) -> Float[np.ndarray, "num_points 3"]:
    """View-independent Lambertian radiance: albedo(x) (ambient + (1 - ambient) max(n . l, 0)), with the shape's
    own albedo when it has one."""
    normals = sdf_gradient(shape, points_unit, eps=1e-5)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    diffuse = np.clip(normals @ LIGHT_DIRECTION_UNIT, 0.0, None)
    surface_albedo = (shape.albedo_fn or albedo)(points_unit)
    return surface_albedo * (AMBIENT + (1.0 - AMBIENT) * diffuse)[:, None]


def render_views(
    shape: Shape,
    intrinsics: Float[np.ndarray, "3 3"],
    c2w_opencv_unit: Float[np.ndarray, "num_views 4 4"],
    width: int,
    height: int,
    background: str = "black",
) -> Tuple[UInt8[np.ndarray, "num_views H W 3"], Bool[np.ndarray, "num_views H W"]]:
    """Images and foreground masks of all views, traced together in the unit-sphere space."""
    origins, directions = zip(*(pixel_rays(intrinsics, c2w, width, height) for c2w in c2w_opencv_unit))
    origins = np.stack(origins).reshape(-1, 3)
    directions = np.stack(directions).reshape(-1, 3)
    t, hit = sphere_trace(shape, origins, directions)
    if background == "environment":
        colours = environment(directions)
    else:
        colours = np.full(directions.shape, 1.0 if background == "white" else 0.0)
    colours[hit] = shade(shape, origins[hit] + t[hit, None] * directions[hit])
    images = np.round(np.clip(colours, 0.0, 1.0) * 255.0).astype(np.uint8)
    num_views = len(c2w_opencv_unit)
    return images.reshape(num_views, height, width, 3), hit.reshape(num_views, height, width)


# ---------------------------------------------------------------------------------------------
# Writing a scene
# ---------------------------------------------------------------------------------------------


@dataclass
class SceneInfo:
    """What `write_scene` wrote, and the geometry needed to check it."""

    output_dir: Path
    """Root directory of the scene."""
    shape_name: str
    """Name of the shape (see `shapes.SHAPES`)."""
    width: int
    """Image width in pixels."""
    height: int
    """Image height in pixels."""
    scale_mat: Float[np.ndarray, "4 4"]
    """Unit-sphere -> world similarity: x_world = scale_mat[:3,:3] x_unit + scale_mat[:3,3]."""
    intrinsics: Float[np.ndarray, "3 3"]
    """Pinhole K shared by all views (fx = fy, principal point at the image centre)."""
    c2w_opencv_world: Float[np.ndarray, "num_views 4 4"]
    """Camera-to-world poses, OpenCV axes, world units."""
    image_paths: List[Path]
    """RGB images, image/000000.png ... (empty when only the blender format was asked for)."""
    mask_paths: List[Path]
    """NeuS masks mask/000.png ... (3 channels, 0 or 255); empty without the neus format."""
    gt_mesh_path: Path
    """Exact surface in world units (gt_mesh.ply)."""
    gt_mesh_unit_path: Path
    """Exact surface in the unit-sphere space (gt_mesh_unit.ply)."""
    scene_json_path: Path
    """scene.json: shape, scale_mat, intrinsics, sizes, conventions."""
    cameras_path: Optional[Path] = None
    """cameras_sphere.npz (neus format)."""
    transforms_path: Optional[Path] = None
    """transforms.json (nerfstudio format), masks in masks/ as single-channel PNGs."""
    blender_dir: Optional[Path] = None
    """blender/ with transforms_{train,val,test}.json and RGBA images (blender format)."""

    @property
    def num_views(self) -> int:
        """Number of rendered views."""
        return len(self.c2w_opencv_world)


_WRITTEN_ENTRIES = (
    "image",
    "mask",
    "masks",
    "blender",
    "cameras_sphere.npz",
    "transforms.json",
    "gt_mesh.ply",
    "gt_mesh_unit.ply",
    "scene.json",
)


def _prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise UserInputError(f"Output path {output_dir} is a file: pass a directory path.")
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise UserInputError(
                f"Output directory {output_dir} is not empty: choose a new path or pass --overwrite to replace the scene."
            )
        for name in _WRITTEN_ENTRIES:
            entry = output_dir / name
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.exists():
                entry.unlink()
    output_dir.mkdir(parents=True, exist_ok=True)


def _validate(
    shape: str,
    num_views: int,
    width: int,
    height: int,
    background: str,
    formats: Tuple[str, ...],
    world_scale: float,
    world_translation: Sequence[float],
    mesh_resolution: int,
) -> Shape:
    if background not in BACKGROUNDS:
        raise UserInputError(f"Unknown background '{background}': choose one of {', '.join(BACKGROUNDS)}.")
    unknown = [name for name in formats if name not in FORMATS]
    if unknown or not formats:
        raise UserInputError(f"Unknown or empty formats {list(formats)}: choose from {', '.join(FORMATS)}.")
    if num_views < 1:
        raise UserInputError(f"num_views must be at least 1, got {num_views}.")
    if width < 8 or height < 8:
        raise UserInputError(f"Images must be at least 8x8 pixels, got {width}x{height}.")
    if not world_scale > 0:
        raise UserInputError(f"world_scale must be positive, got {world_scale}.")
    if len(world_translation) != 3:
        raise UserInputError(f"world_translation needs 3 values (x y z), got {list(world_translation)}.")
    if mesh_resolution < 16:
        raise UserInputError(f"mesh_resolution must be at least 16, got {mesh_resolution}.")
    return get_shape(shape)


def _neus_cameras(
    intrinsics: np.ndarray, c2w_opencv_world: np.ndarray, scale_mat: np.ndarray, width: int, height: int
) -> dict:
    """cameras_sphere.npz arrays: world_mat = K [R|t] (4x4, world units), scale_mat, camera_mat (+ _inv)."""
    intrinsics_4x4 = np.eye(4)
    intrinsics_4x4[:3, :3] = intrinsics
    # normalized-device matrix as in the IDR release; loaders ignore it
    camera_mat = np.array([[2.0 / width, 0, -1, 0], [0, 2.0 / height, -1, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    arrays = {}
    for index, c2w in enumerate(c2w_opencv_world):
        world_mat = intrinsics_4x4 @ np.linalg.inv(c2w)
        arrays[f"world_mat_{index}"] = world_mat
        arrays[f"world_mat_inv_{index}"] = np.linalg.inv(world_mat)
        arrays[f"scale_mat_{index}"] = scale_mat
        arrays[f"scale_mat_inv_{index}"] = np.linalg.inv(scale_mat)
        arrays[f"camera_mat_{index}"] = camera_mat
        arrays[f"camera_mat_inv_{index}"] = np.linalg.inv(camera_mat)
    return arrays


def _write_blender(
    blender_dir: Path,
    images: np.ndarray,
    masks: np.ndarray,
    intrinsics: np.ndarray,
    c2w_opencv_unit: np.ndarray,
    holdout_every: int,
) -> None:
    """Blender layout: every `holdout_every`-th view to test, the one half-way after it to val."""
    num_views = len(images)
    splits = {"train": [], "val": [], "test": []}
    for index in range(num_views):
        if holdout_every > 1 and index % holdout_every == 0:
            splits["test"].append(index)
        elif holdout_every > 1 and index % holdout_every == holdout_every // 2:
            splits["val"].append(index)
        else:
            splits["train"].append(index)
    width = images.shape[2]
    camera_angle_x = 2.0 * np.arctan(0.5 * width / intrinsics[0, 0])
    for split, indices in splits.items():
        (blender_dir / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for position, index in enumerate(indices):
            rgba = np.concatenate([images[index], (masks[index, ..., None] * 255).astype(np.uint8)], -1)
            Image.fromarray(rgba, mode="RGBA").save(blender_dir / split / f"r_{position}.png")
            c2w_opengl = flip_camera_axes(c2w_opencv_unit[index])
            c2w_opengl[:3, 3] *= BLENDER_SCALE
            frames.append(
                {"file_path": f"./{split}/r_{position}", "view_index": index, "transform_matrix": c2w_opengl.tolist()}
            )
        meta = {"camera_angle_x": camera_angle_x, "frames": frames}
        (blender_dir / f"transforms_{split}.json").write_text(json.dumps(meta, indent=2))


DTU_PRESET = {
    "shape": "building",
    "layout": "dtu",
    "num_views": DTU_NUM_VIEWS,
    "width": 400,
    "height": 300,
    "background": "environment",
    "world_scale": DTU_WORLD_SCALE,
    "world_translation": DTU_WORLD_TRANSLATION,
    "mesh_resolution": 384,
}
"""A photo-like object at DTU's scale: the building (`shapes.building`: flat faces, sharp edges, a thin chimney,
recesses, a brick-and-tile albedo, lit from one side) seen by 49 cameras in DTU's layout at 400x300 (DTU's
images downscaled 4x), in millimetres; one pixel at the object is about 0.93 mm."""

PRESETS = {"dtu": DTU_PRESET}


def write_scene(
    output_dir: Path,
    shape: str = DEFAULT_SHAPE,
    num_views: int = 40,
    width: int = 96,
    height: int = 96,
    background: str = "black",
    seed: int = 0,
    formats: Sequence[str] = ("neus", "nerfstudio"),
    world_scale: float = DEFAULT_WORLD_SCALE,
    world_translation: Sequence[float] = DEFAULT_WORLD_TRANSLATION,
    mesh_resolution: int = 256,
    holdout_every: int = 8,
    overwrite: bool = False,
    layout: str = "orbit",
) -> SceneInfo:
    """Render `shape` from `num_views` cameras and write images, masks, cameras and the exact mesh.

    Layout of `output_dir` (see the module docstring for conventions):
      image/000000.png ...         RGB views (neus and nerfstudio formats)
      mask/000.png ...             3-channel 0/255 masks (neus)
      cameras_sphere.npz           world_mat_i, scale_mat_i, camera_mat_i and *_inv_i (neus)
      masks/000000.png ...         1-channel 0/255 masks, as nerfstudio reads them (nerfstudio)
      transforms.json              OpenGL c2w in world units, fl_x, fl_y, cx, cy, w, h (nerfstudio)
      blender/                     transforms_{train,val,test}.json, {split}/r_k.png RGBA (blender)
      gt_mesh.ply, gt_mesh_unit.ply   exact surface in world units / unit-sphere space
      scene.json                   shape, scale_mat, intrinsics, sizes, conventions

    `layout` places the cameras: "orbit" all around the object (`camera_poses_unit`, the focal length of
    `intrinsics_matrix`), or "dtu", DTU's sphere cap, distances and focal length (`dtu_camera_poses_unit`,
    `dtu_intrinsics_matrix`); `DTU_PRESET` holds the settings of a DTU-like scene.
    """
    output_dir = Path(output_dir)
    if layout not in LAYOUTS:
        raise UserInputError(f"Unknown camera layout '{layout}': choose one of {', '.join(LAYOUTS)}.")
    formats = tuple(formats)
    solid = _validate(
        shape, num_views, width, height, background, formats, world_scale, world_translation, mesh_resolution
    )
    _prepare_output_dir(output_dir, overwrite)

    scale_mat = similarity_matrix(world_scale, world_translation)
    if layout == "dtu":
        intrinsics = dtu_intrinsics_matrix(width, height)
        c2w_opencv_unit = dtu_camera_poses_unit(num_views, seed)
    else:
        intrinsics = intrinsics_matrix(width, height)
        c2w_opencv_unit = camera_poses_unit(num_views, seed)
    c2w_opencv_world = c2w_opencv_unit.copy()
    c2w_opencv_world[:, :3, 3] = c2w_opencv_unit[:, :3, 3] * world_scale + np.asarray(world_translation)
    images, masks = render_views(solid, intrinsics, c2w_opencv_unit, width, height, background)

    image_paths: List[Path] = []
    mask_paths: List[Path] = []
    cameras_path = transforms_path = blender_dir = None
    if "neus" in formats or "nerfstudio" in formats:
        (output_dir / "image").mkdir()
        for index, image in enumerate(images):
            image_paths.append(output_dir / "image" / f"{index:06d}.png")
            Image.fromarray(image).save(image_paths[-1])
    if "neus" in formats:
        (output_dir / "mask").mkdir()
        for index, mask in enumerate(masks):
            mask_paths.append(output_dir / "mask" / f"{index:03d}.png")
            Image.fromarray(np.repeat(mask[..., None], 3, -1).astype(np.uint8) * 255).save(mask_paths[-1])
        cameras_path = output_dir / "cameras_sphere.npz"
        np.savez(cameras_path, **_neus_cameras(intrinsics, c2w_opencv_world, scale_mat, width, height))
    if "nerfstudio" in formats:
        (output_dir / "masks").mkdir()
        frames = []
        for index, mask in enumerate(masks):
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(output_dir / "masks" / f"{index:06d}.png")
            frames.append(
                {
                    "file_path": f"image/{index:06d}.png",
                    "mask_path": f"masks/{index:06d}.png",
                    "transform_matrix": flip_camera_axes(c2w_opencv_world[index]).tolist(),
                }
            )
        transforms = {
            "camera_model": "OPENCV",
            "fl_x": intrinsics[0, 0],
            "fl_y": intrinsics[1, 1],
            "cx": intrinsics[0, 2],
            "cy": intrinsics[1, 2],
            "w": width,
            "h": height,
            "k1": 0.0,
            "k2": 0.0,
            "p1": 0.0,
            "p2": 0.0,
            "frames": frames,
        }
        transforms_path = output_dir / "transforms.json"
        transforms_path.write_text(json.dumps(transforms, indent=2))
    if "blender" in formats:
        blender_dir = output_dir / "blender"
        _write_blender(blender_dir, images, masks, intrinsics, c2w_opencv_unit, holdout_every)

    mesh_unit = surface_mesh(solid, mesh_resolution)
    gt_mesh_unit_path = output_dir / "gt_mesh_unit.ply"
    mesh_unit.export(gt_mesh_unit_path)
    mesh_world = mesh_unit.copy()
    mesh_world.apply_transform(scale_mat)
    gt_mesh_path = output_dir / "gt_mesh.ply"
    mesh_world.export(gt_mesh_path)

    scene = {
        "shape": solid.name,
        "num_views": num_views,
        "width": width,
        "height": height,
        "background": background,
        "seed": seed,
        "formats": list(formats),
        "scale_mat": scale_mat.tolist(),
        "intrinsics": intrinsics.tolist(),
        "pixel_center_offset": 0.5,
        "up_axis_unit": [0.0, 0.0, 1.0],
        "bounding_radius_unit": solid.bounding_radius,
        "layout": layout,
        "camera_distance_range_unit": list(DTU_DISTANCE_RANGE if layout == "dtu" else CAMERA_DISTANCE_RANGE),
        "light_direction_unit": LIGHT_DIRECTION_UNIT.tolist(),
        "blender_scale": BLENDER_SCALE if blender_dir is not None else None,
        "mesh_resolution": mesh_resolution,
    }
    scene_json_path = output_dir / "scene.json"
    scene_json_path.write_text(json.dumps(scene, indent=2))
    return SceneInfo(
        output_dir=output_dir,
        shape_name=solid.name,
        width=width,
        height=height,
        scale_mat=scale_mat,
        intrinsics=intrinsics,
        c2w_opencv_world=c2w_opencv_world,
        image_paths=image_paths,
        mask_paths=mask_paths,
        gt_mesh_path=gt_mesh_path,
        gt_mesh_unit_path=gt_mesh_unit_path,
        scene_json_path=scene_json_path,
        cameras_path=cameras_path,
        transforms_path=transforms_path,
        blender_dir=blender_dir,
    )
