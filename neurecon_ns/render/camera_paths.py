"""Smooth camera paths for showcase videos, as nerfstudio `camera_path.json` files.

Every function takes and returns camera-to-world matrices of nerfstudio's OpenGL convention (x right,
y up, z back: a camera looks along -z) in the *training space* of a run, the space of
`pipeline.datamanager.train_dataset.cameras.camera_to_worlds`. `ns-render camera-path` applies no
data-parser transform to the poses it reads (its viewer writes them in that space too), so a path
built here renders as is.

The kinds, after the neurecon renderer:

- interpolate: through a list of training views; positions on a Catmull-Rom spline, rotations by slerp.
- spiral: NeRF's spiral, an ellipse wobbling along the viewing axis around the mean pose of the views.
- small-circle: the circle through the centres of three views, from the first through the second to the third.
- great-circle: the circle about the target through the centres of two views.
- spherical-spiral: starts on the small circle of three views and rises over several turns.

The circles and the spherical spiral look at a target point (the origin of the training space, the
centre of the region of interest, unless told otherwise) with the circle's axis as up, and ease in and
out so that the video starts and stops smoothly.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from jaxtyping import Float
from scipy.spatial.transform import Rotation, Slerp

PATH_KINDS = ("interpolate", "spiral", "small-circle", "great-circle", "spherical-spiral")
"""Kinds of path that `make_camera_path` builds."""

VIEWS_NEEDED: Dict[str, Tuple[int, Optional[int]]] = {
    "interpolate": (2, None),
    "spiral": (2, None),
    "small-circle": (3, 3),
    "great-circle": (2, 2),
    "spherical-spiral": (3, 3),
}
"""(least, most) number of named views per kind; None: no upper bound."""


# ---------------------------------------------------------------------------------------------------------------------
# geometry


def normalize(vectors: Float[np.ndarray, "*bs 3"]) -> Float[np.ndarray, "*bs 3"]:
    """`v / |v|` along the last axis."""
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def look_at(
    positions: Float[np.ndarray, "num_frames 3"], target: Float[np.ndarray, "3"], up: Float[np.ndarray, "3"]
) -> Float[np.ndarray, "num_frames 4 4"]:
    """OpenGL camera-to-world matrices of cameras at `positions` looking at `target`.

    `z = (p - target) / |p - target|` (the camera looks along -z), `x = up x z / |up x z|`, `y = z x x`:
    the image's up is `up` projected onto the image plane.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    back = normalize(positions - np.asarray(target, dtype=np.float64))
    right = normalize(np.cross(np.asarray(up, dtype=np.float64), back))
    image_up = np.cross(back, right)
    c2w = np.tile(np.eye(4), (len(positions), 1, 1))
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, image_up, back, positions
    return c2w


def mean_up(c2w: Float[np.ndarray, "num_views 4 4"]) -> Float[np.ndarray, "3"]:
    """The scene's up direction: the normalised sum of the cameras' up axes (the y columns)."""
    return normalize(np.asarray(c2w)[:, :3, 1].sum(axis=0))


def rotate_about_axis(
    vectors: Float[np.ndarray, "*bs 3"], axis: Float[np.ndarray, "3"], angles: Float[np.ndarray, "*bs"]
) -> Float[np.ndarray, "*bs 3"]:
    """Rodrigues' rotation by `angles` about the unit `axis` (counter-clockwise seen from the tip of the axis):
    `v cos a + (k x v) sin a + k (k . v)(1 - cos a)`."""
    angles = np.asarray(angles, dtype=np.float64)[..., None]
    vectors = np.broadcast_to(vectors, angles.shape[:-1] + (3,))
    along = (vectors @ axis)[..., None] * axis
    return vectors * np.cos(angles) + np.cross(axis, vectors) * np.sin(angles) + along * (1.0 - np.cos(angles))


def angle_about_axis(
    vector_from: Float[np.ndarray, "3"], vector_to: Float[np.ndarray, "*bs 3"], axis: Float[np.ndarray, "3"]
) -> Float[np.ndarray, "*bs"]:
    """Counter-clockwise angle in [0, 2 pi) from `vector_from` to `vector_to` about `axis` (both projected onto
    the plane normal to it): `atan2(k . (u x v), u . v)`."""
    sine = np.cross(vector_from, vector_to) @ axis
    cosine = vector_to @ vector_from - (vector_from @ axis) * (vector_to @ axis)
    return np.mod(np.arctan2(sine, cosine), 2.0 * np.pi)


def circumcircle(
    point_a: Float[np.ndarray, "3"], point_b: Float[np.ndarray, "3"], point_c: Float[np.ndarray, "3"]
) -> Tuple[Float[np.ndarray, "3"], Float[np.ndarray, "3"], float]:
    """Centre, unit normal and radius of the circle through three points.

    With `u = a - c`, `v = b - c`: centre `= c + ((|u|^2 v - |v|^2 u) x (u x v)) / (2 |u x v|^2)`; the normal
    `(b - a) x (c - a) / |...|` makes a -> b -> c counter-clockwise about it.

    Raises:
        ValueError: the points are (nearly) on one line.
    """
    u, v = point_a - point_c, point_b - point_c
    u_cross_v = np.cross(u, v)
    scale = max(np.linalg.norm(u), np.linalg.norm(v)) ** 2
    if np.linalg.norm(u_cross_v) <= 1e-6 * scale:
        raise ValueError("the three camera centres lie (nearly) on one line, so no circle passes through them")
    center = point_c + np.cross(u @ u * v - v @ v * u, u_cross_v) / (2.0 * u_cross_v @ u_cross_v)
    normal = normalize(np.cross(point_b - point_a, point_c - point_a))
    return center, normal, float(np.linalg.norm(point_a - center))


def ease_in_out(s: Float[np.ndarray, " num"]) -> Float[np.ndarray, " num"]:
    """Sinusoidal easing `(1 - cos(pi s)) / 2`: 0 -> 0 and 1 -> 1 with zero speed at both ends."""
    return (1.0 - np.cos(np.pi * np.asarray(s, dtype=np.float64))) / 2.0


def path_parameter(num_frames: int, loop: bool) -> Float[np.ndarray, " num_frames"]:
    """Where each frame lies along a path, `s` in [0, 1]: `k / (F - 1)` reaches the end; a loop stops one frame
    short (`k / F`) so that the video repeats without a doubled frame."""
    if loop:
        return np.arange(num_frames) / num_frames
    return np.arange(num_frames) / max(num_frames - 1, 1)


def _oriented(normal: Float[np.ndarray, "3"], up: Float[np.ndarray, "3"]) -> Float[np.ndarray, "3"]:
    """`normal` or `-normal`, whichever points to the same side as `up`."""
    return normal if normal @ up >= 0.0 else -normal


# ---------------------------------------------------------------------------------------------------------------------
# the kinds of path


def catmull_rom(
    before: Float[np.ndarray, "*bs 3"],
    start: Float[np.ndarray, "*bs 3"],
    end: Float[np.ndarray, "*bs 3"],
    after: Float[np.ndarray, "*bs 3"],
    t: Float[np.ndarray, "*bs"],
) -> Float[np.ndarray, "*bs 3"]:
    """Uniform Catmull-Rom segment from `start` (t = 0) to `end` (t = 1): the cubic Hermite curve with tangents
    `m0 = (end - before) / 2`, `m1 = (after - start) / 2`,
    `p(t) = (2t^3 - 3t^2 + 1) p0 + (t^3 - 2t^2 + t) m0 + (-2t^3 + 3t^2) p1 + (t^3 - t^2) m1`."""
    t = np.asarray(t, dtype=np.float64)[..., None]
    tangent_start, tangent_end = (end - before) / 2.0, (after - start) / 2.0
    return (
        (2 * t**3 - 3 * t**2 + 1) * start
        + (t**3 - 2 * t**2 + t) * tangent_start
        + (-2 * t**3 + 3 * t**2) * end
        + (t**3 - t**2) * tangent_end
    )


def keyframe_indices(num_keys: int, num_frames: int, loop: bool) -> np.ndarray:
    """Frame at which each key view is shown: spread evenly, the first at frame 0 and, unless the path loops,
    the last at the last frame (a loop returns to key 0 at frame `num_frames`, just past the end)."""
    spans = num_keys if loop else num_keys - 1
    last = num_frames if loop else num_frames - 1
    return np.round(np.arange(spans + 1) * last / spans).astype(np.int64)


def interpolate_poses(
    key_c2w: Float[np.ndarray, "num_keys 4 4"], num_frames: int, loop: bool = False
) -> Float[np.ndarray, "num_frames 4 4"]:
    """A path through the key poses in order, each key pose shown exactly at its `keyframe_indices` frame.

    Between keys `i` and `i + 1`, at `t = (f - f_i) / (f_{i+1} - f_i)`: the position follows the Catmull-Rom
    segment through the key positions (the end keys repeat themselves as neighbours unless the path loops), the
    rotation is the slerp `R_i (R_i^T R_{i+1})^t`.
    """
    key_c2w = np.asarray(key_c2w, dtype=np.float64)
    num_keys = len(key_c2w)
    if num_frames < num_keys:
        raise ValueError(f"{num_frames} frames cannot show {num_keys} views, one per frame; ask for at least {num_keys} frames")
    keys = np.concatenate([key_c2w, key_c2w[:1]]) if loop else key_c2w
    positions = keys[:, :3, 3]
    if loop:
        padded = np.concatenate([positions[-2:-1], positions, positions[1:2]])
    else:
        padded = np.concatenate([positions[:1], positions, positions[-1:]])
    frames_of_keys = keyframe_indices(num_keys, num_frames, loop)
    frame = np.arange(num_frames)
    segment = np.clip(np.searchsorted(frames_of_keys, frame, side="right") - 1, 0, len(keys) - 2)
    t = (frame - frames_of_keys[segment]) / (frames_of_keys[segment + 1] - frames_of_keys[segment])
    c2w = np.tile(np.eye(4), (num_frames, 1, 1))
    c2w[:, :3, 3] = catmull_rom(padded[segment], padded[segment + 1], padded[segment + 2], padded[segment + 3], t)
    key_rotations = Rotation.from_matrix(keys[:, :3, :3])
    c2w[:, :3, :3] = Slerp(np.arange(len(keys)), key_rotations)(segment + t).as_matrix()
    return c2w


def mean_pose(
    c2w: Float[np.ndarray, "num_views 4 4"], target: Float[np.ndarray, "3"], up: Float[np.ndarray, "3"]
) -> Float[np.ndarray, "4 4"]:
    """The average camera: at the mean centre, looking along the mean viewing direction (the mean of the -z
    columns), with `up` as the image's up."""
    c2w = np.asarray(c2w, dtype=np.float64)
    center = c2w[:, :3, 3].mean(axis=0)
    forward = normalize(-c2w[:, :3, 2].sum(axis=0))
    return look_at(center[None], center + forward, up)[0]


def spiral_poses(
    c2w: Float[np.ndarray, "num_views 4 4"],
    target: Float[np.ndarray, "3"],
    up: Float[np.ndarray, "3"],
    num_frames: int,
    turns: float = 2.0,
    z_rate: float = 0.5,
    radius_percentile: float = 90.0,
    radius_scale: float = 1.0,
) -> Float[np.ndarray, "num_frames 4 4"]:
    """NeRF's spiral around the mean pose `M` of the views (LLFF's `render_path_spiral`).

    Radii `r = radius_scale * percentile(|M^-1 c_i|, radius_percentile)` per axis of `M` over the camera centres
    `c_i`; focus depth `d = (target - m) . f` along the mean viewing direction `f` from the mean centre `m`. Frame
    `k` sits at `M (r_x cos t, r_y sin t, r_z sin(z_rate t))` with `t = 2 pi turns k / F`, looking at `m + d f`.
    """
    pose = mean_pose(c2w, target, up)
    rotation, center = pose[:3, :3], pose[:3, 3]
    forward = -rotation[:, 2]
    focus_depth = float((np.asarray(target) - center) @ forward)
    if focus_depth <= 0.0:
        raise ValueError("the target lies behind the mean camera, so the spiral has nothing to look at")
    centers_local = (np.asarray(c2w)[:, :3, 3] - center) @ rotation
    radii = radius_scale * np.percentile(np.abs(centers_local), radius_percentile, axis=0)
    theta = 2.0 * np.pi * turns * path_parameter(num_frames, loop=True)
    offsets_local = np.stack([np.cos(theta), np.sin(theta), np.sin(z_rate * theta)], axis=-1) * radii
    positions = center + offsets_local @ rotation.T
    return look_at(positions, center + focus_depth * forward, up)


def _eased_path_parameter(num_frames: int, loop: bool, ease: bool) -> Float[np.ndarray, " num_frames"]:
    """`path_parameter`, eased in and out when `ease`."""
    s = path_parameter(num_frames, loop)
    return ease_in_out(s) if ease else s


def small_circle_poses(
    centers: Float[np.ndarray, "3 3"],
    target: Float[np.ndarray, "3"],
    up: Float[np.ndarray, "3"],
    num_frames: int,
    loop: bool = False,
    ease: bool = True,
) -> Float[np.ndarray, "num_frames 4 4"]:
    """Along the circle through three camera centres `a, b, c` (`circumcircle`), looking at `target`.

    The arc starts at `a` and runs through `b` to `c`; a loop goes on around back to `a`. The camera's up is the
    circle's axis (on the side of `up`), so the image moves sideways.
    """
    point_a, point_b, point_c = np.asarray(centers, dtype=np.float64)
    center, normal, _ = circumcircle(point_a, point_b, point_c)
    full_angle = 2.0 * np.pi if loop else float(angle_about_axis(point_a - center, point_c - center, normal))
    angles = full_angle * _eased_path_parameter(num_frames, loop, ease)
    positions = center + rotate_about_axis(point_a - center, normal, angles)
    return look_at(positions, target, _oriented(normal, up))


def great_circle_poses(
    centers: Float[np.ndarray, "2 3"],
    target: Float[np.ndarray, "3"],
    up: Float[np.ndarray, "3"],
    num_frames: int,
    loop: bool = False,
    ease: bool = True,
) -> Float[np.ndarray, "num_frames 4 4"]:
    """Along the great circle about `target` through two camera centres `a, b`, looking at `target`.

    The plane of the circle holds `target`, `a` and `b`; the path takes the shorter arc from `a` to `b` (a loop
    goes on around back to `a`). The distance to `target` changes linearly with the angle between the two views'
    distances, so both centres are met exactly even when they are not equally far.
    """
    point_a, point_b = np.asarray(centers, dtype=np.float64)
    offset_a, offset_b = point_a - target, point_b - target
    normal = np.cross(offset_a, offset_b)
    if np.linalg.norm(normal) <= 1e-6 * np.linalg.norm(offset_a) * np.linalg.norm(offset_b):
        raise ValueError("the two camera centres and the target lie (nearly) on one line, which fixes no circle")
    normal = normalize(normal)
    radius_a, radius_b = np.linalg.norm(offset_a), np.linalg.norm(offset_b)
    angle_b = float(angle_about_axis(offset_a, offset_b, normal))
    angles = (2.0 * np.pi if loop else angle_b) * _eased_path_parameter(num_frames, loop, ease)
    # distance to the target: linear in the angle from a to b, and (for a loop) back from b to a
    radii = np.where(
        angles <= angle_b,
        radius_a + (radius_b - radius_a) * angles / angle_b,
        radius_b + (radius_a - radius_b) * (angles - angle_b) / (2.0 * np.pi - angle_b),
    )
    positions = target + radii[:, None] * rotate_about_axis(offset_a / radius_a, normal, angles)
    return look_at(positions, target, _oriented(normal, up))


def spherical_spiral_poses(
    centers: Float[np.ndarray, "3 3"],
    target: Float[np.ndarray, "3"],
    up: Float[np.ndarray, "3"],
    num_frames: int,
    turns: float = 2.0,
    rise_deg: float = 30.0,
    ease: bool = True,
) -> Float[np.ndarray, "num_frames 4 4"]:
    """A spherical spiral that starts at `a` on the small circle through `a, b, c` and rises `rise_deg` degrees
    of elevation over `turns` turns about the circle's axis, looking at `target`.

    The sphere is centred at `o`, the point of the circle's axis nearest `target`, and holds the circle; with
    `e1 = (a - C) / |a - C|`, `e2 = n x e1` (`C`, `n`: the circle's centre and axis on the side of `up`), radius
    `rho = |a - o|` and start elevation `phi0` (that of the circle), the position at `s` in [0, 1] is
    `o + rho (cos(phi) (cos(t) e1 + sin(t) e2) + sin(phi) n)`, `t = 2 pi turns s`, `phi = phi0 + rise s`
    (with `s` eased in and out when `ease`).
    """
    point_a, point_b, point_c = np.asarray(centers, dtype=np.float64)
    circle_center, normal, circle_radius = circumcircle(point_a, point_b, point_c)
    normal = _oriented(normal, up)
    sphere_center = circle_center + normal * float((np.asarray(target) - circle_center) @ normal)
    height = float((circle_center - sphere_center) @ normal)
    sphere_radius = math.hypot(circle_radius, height)
    start_elevation = math.atan2(height, circle_radius)
    end_elevation = start_elevation + math.radians(rise_deg)
    if abs(end_elevation) >= math.radians(85.0):
        raise ValueError(
            f"the spiral would end {math.degrees(end_elevation):.0f} degrees above the circle's plane through the target, "
            "at the pole, where the camera's up is undefined"
        )
    s = _eased_path_parameter(num_frames, loop=False, ease=ease)
    azimuth = 2.0 * np.pi * turns * s
    elevation = start_elevation + (end_elevation - start_elevation) * s
    axis_1 = normalize(point_a - circle_center)
    axis_2 = np.cross(normal, axis_1)
    horizontal = np.cos(azimuth)[:, None] * axis_1 + np.sin(azimuth)[:, None] * axis_2
    directions = np.cos(elevation)[:, None] * horizontal + np.sin(elevation)[:, None] * normal
    return look_at(sphere_center + sphere_radius * directions, target, normal)


# ---------------------------------------------------------------------------------------------------------------------
# from training views to a camera_path.json


def make_camera_path(
    kind: str,
    train_c2w: Float[np.ndarray, "num_views 4 4"],
    views: Sequence[int],
    num_frames: int,
    target: Optional[Sequence[float]] = None,
    loop: bool = False,
    ease: bool = True,
    turns: float = 2.0,
    rise_deg: float = 30.0,
    radius_scale: float = 1.0,
) -> Float[np.ndarray, "num_frames 4 4"]:
    """The `kind` of path through (or around) the training views `views` (indices into `train_c2w`).

    `target` defaults to the origin of the training space; the scene's up is `mean_up` of all training views.

    Raises:
        ValueError: the views do not fit the kind (count, range, or a geometry that fixes no path), in one sentence.
    """
    if kind not in PATH_KINDS:
        raise ValueError(f"unknown kind '{kind}'; use one of {', '.join(PATH_KINDS)}")
    train_c2w = np.asarray(train_c2w, dtype=np.float64)
    if train_c2w.shape[-2:] == (3, 4):
        train_c2w = np.concatenate([train_c2w, np.tile([[[0.0, 0.0, 0.0, 1.0]]], (len(train_c2w), 1, 1))], axis=1)
    check_views(kind, views, len(train_c2w))
    if num_frames < 2:
        raise ValueError(f"a path needs at least 2 frames, not {num_frames}")
    chosen = train_c2w[list(views)]
    centers = chosen[:, :3, 3]
    target_point = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    up = mean_up(train_c2w)
    if kind == "interpolate":
        return interpolate_poses(chosen, num_frames, loop)
    if kind == "spiral":
        return spiral_poses(chosen, target_point, up, num_frames, turns=turns, radius_scale=radius_scale)
    if kind == "small-circle":
        return small_circle_poses(centers, target_point, up, num_frames, loop, ease)
    if kind == "great-circle":
        return great_circle_poses(centers, target_point, up, num_frames, loop, ease)
    return spherical_spiral_poses(centers, target_point, up, num_frames, turns=turns, rise_deg=rise_deg, ease=ease)


def check_views(kind: str, views: Sequence[int], num_views: int) -> None:
    """Raise ValueError unless `views` are valid view indices, as many as `kind` needs."""
    least, most = VIEWS_NEEDED[kind]
    if len(views) < least or (most is not None and len(views) > most):
        wanted = f"exactly {least}" if least == most else f"at least {least}"
        raise ValueError(f"the {kind} path needs {wanted} view ids, but {len(views)} were given")
    bad = [view for view in views if not 0 <= view < num_views]
    if bad:
        raise ValueError(f"view id {bad[0]} does not exist: the run has {num_views} training views, ids 0 to {num_views - 1}")


def vertical_fov_deg(fy: float, height: float) -> float:
    """Vertical field of view of a pinhole camera, `2 atan(H / (2 f_y))`, in degrees (what camera_path.json holds)."""
    return math.degrees(2.0 * math.atan(height / (2.0 * fy)))


def camera_path_dict(
    c2w: Float[np.ndarray, "num_frames 4 4"],
    fov_deg: float,
    width: int,
    height: int,
    fps: float,
    keyframes_c2w: Optional[Float[np.ndarray, "num_keys 4 4"]] = None,
    loop: bool = False,
    metadata: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The camera_path.json that nerfstudio's viewer exports and `ns-render camera-path` reads.

    Frames carry `camera_to_world` (16 floats, row-major OpenGL camera-to-world), `fov` (vertical, degrees) and
    `aspect`; `seconds = frames / fps`. The named training views go in as `keyframes`, so that the viewer's
    "Load path" shows them as editable keyframes.
    """
    aspect = width / height
    frames: List[Dict[str, Any]] = [
        {"camera_to_world": np.asarray(pose, dtype=np.float64).reshape(16).tolist(), "fov": fov_deg, "aspect": aspect}
        for pose in c2w
    ]
    keyframes = [
        {"matrix": np.asarray(pose, dtype=np.float64).reshape(16).tolist(), "fov": fov_deg, "aspect": aspect}
        for pose in (keyframes_c2w if keyframes_c2w is not None else [])
    ]
    return {
        "camera_type": "perspective",
        "render_height": int(height),
        "render_width": int(width),
        "fps": float(fps),
        "seconds": len(frames) / float(fps),
        "default_fov": fov_deg,
        "default_transition_sec": 1.0,
        "is_cycle": bool(loop),
        "smoothness_value": 0.5,
        "keyframes": keyframes,
        "camera_path": frames,
        "neurecon": dict(metadata or {}),
    }
