"""Analytic shapes with exact geometry, in the unit-sphere space (the object lies inside |x| < 1).

Each shape is a signed distance function: negative inside, zero exactly on the surface, and
1-Lipschitz everywhere (a true Euclidean distance for the primitives; a lower bound on it for the
smooth union, whose gradient is a convex combination of unit gradients). That is what sphere
tracing needs to be safe and what makes the zero level set the one exact surface that renders,
masks and ground-truth meshes all share.

The SDFs take numpy arrays or torch tensors of shape [..., 3] and return [...]; they only use
operations that both libraries spell the same way. +z is "up" in the unit-sphere space.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
import trimesh
from jaxtyping import Float
from skimage.measure import marching_cubes

from neurecon_ns.errors import UserInputError

Array = Union[np.ndarray, torch.Tensor]
SdfFn = Callable[[Array], Array]


def _xp(points: Array):
    """The array library (numpy or torch) that `points` belongs to."""
    return torch if isinstance(points, torch.Tensor) else np


def _length(vectors: Array) -> Array:
    """Euclidean norm over the last axis."""
    return _xp(vectors).sqrt(_xp(vectors).einsum("...i,...i->...", vectors, vectors))


# ---------------------------------------------------------------------------------------------
# Primitive SDFs (exact Euclidean distances)
# ---------------------------------------------------------------------------------------------


def sphere_sdf(points: Array, radius: float, center: Sequence[float] = (0.0, 0.0, 0.0)) -> Array:
    """f(x) = |x - c| - r."""
    return _length(points - _as_like(center, points)) - radius


def torus_sdf(points: Array, major_radius: float, minor_radius: float) -> Array:
    """Torus around the z axis: f(x) = |(sqrt(x^2 + y^2) - R, z)| - r."""
    ring_distance = _length(points[..., :2]) - major_radius
    return _xp(points).sqrt(ring_distance**2 + points[..., 2] ** 2) - minor_radius


def capsule_sdf(points: Array, start: Sequence[float], end: Sequence[float], radius: float) -> Array:
    """Capsule around segment [a, b]: f(x) = |x - a - h (b - a)| - r, h = clamp((x-a).(b-a) / |b-a|^2, 0, 1)."""
    a = _as_like(start, points)
    b = _as_like(end, points)
    ab = b - a
    h = (((points - a) @ ab) / (ab @ ab)).clip(0.0, 1.0)
    return _length(points - a - h[..., None] * ab) - radius


def rounded_box_sdf(points: Array, half_extents: Sequence[float], corner_radius: float) -> Array:
    """Axis-aligned box with rounded edges: q = |x| - (e - r); f = |max(q, 0)| + min(max_i q_i, 0) - r."""
    xp = _xp(points)
    q = xp.abs(points) - (_as_like(half_extents, points) - corner_radius)
    outside = _length(q.clip(0.0, None))
    inside = xp.amax(q, -1).clip(None, 0.0)
    return outside + inside - corner_radius


def polygon_sdf(points_2d: Array, vertices: Sequence[Sequence[float]]) -> Array:
    """Signed distance to a simple polygon in the plane, negative inside: the distance to the nearest edge
    segment, `|w - e clamp(w.e / e.e, 0, 1)|` with `e` the edge and `w` the point from its start, signed by the
    parity of the edges that a ray from the point towards +x crosses."""
    xp = _xp(points_2d)
    corners = np.asarray(vertices, dtype=np.float64)
    x, y = points_2d[..., 0], points_2d[..., 1]
    squared = (x - corners[0, 0]) ** 2 + (y - corners[0, 1]) ** 2
    inside = xp.zeros_like(x) > 1.0
    for index in range(len(corners)):
        (start_x, start_y), (end_x, end_y) = corners[index], corners[index - 1]
        edge_x, edge_y = end_x - start_x, end_y - start_y
        to_x, to_y = x - start_x, y - start_y
        along = ((to_x * edge_x + to_y * edge_y) / (edge_x**2 + edge_y**2)).clip(0.0, 1.0)
        squared = xp.minimum(squared, (to_x - along * edge_x) ** 2 + (to_y - along * edge_y) ** 2)
        above_start, below_end = y >= start_y, y < end_y
        left_of_edge = edge_x * to_y > edge_y * to_x
        crosses = (above_start & below_end & left_of_edge) | (~above_start & ~below_end & ~left_of_edge)
        inside = inside ^ crosses
    distance = xp.sqrt(squared)
    return xp.where(inside, -distance, distance)


def extrusion_sdf(distance_2d: Array, height: Array, half_length: float) -> Array:
    """A plane figure (its signed distance `distance_2d`) extruded to `|height| <= half_length`: with
    `w = (d_2d, |h| - l)`, `f = min(max(w_1, w_2), 0) + |max(w, 0)|`, exact when `d_2d` is."""
    xp = _xp(distance_2d)
    across = xp.abs(height) - half_length
    outside = xp.sqrt(distance_2d.clip(0.0, None) ** 2 + across.clip(0.0, None) ** 2)
    return xp.maximum(distance_2d, across).clip(None, 0.0) + outside


def box_sdf(points: Array, half_extents: Sequence[float], center: Sequence[float] = (0.0, 0.0, 0.0)) -> Array:
    """Axis-aligned box with sharp edges: q = |x - c| - e; f = |max(q, 0)| + min(max_i q_i, 0)."""
    return rounded_box_sdf(points - _as_like(center, points), half_extents, 0.0)


def smooth_union(distance_a: Array, distance_b: Array, blend: float) -> Array:
    """Quadratic smooth minimum: min(a, b) - k/4 * max(k - |a - b|, 0)^2 / k^2.

    Its partial derivatives are non-negative and sum to 1, so the union of 1-Lipschitz SDFs stays
    1-Lipschitz; it is <= min(a, b), so its zero set encloses both inputs.
    """
    xp = _xp(distance_a)
    overlap = (blend - xp.abs(distance_a - distance_b)).clip(0.0, None) / blend
    return xp.minimum(distance_a, distance_b) - 0.25 * blend * overlap**2


def rotation_about_axis(axis: Sequence[float], angle_rad: float) -> Float[np.ndarray, "3 3"]:
    """Rodrigues: R = I + sin(t) [k]x + (1 - cos(t)) [k]x^2 for the unit axis k."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle_rad) * cross + (1.0 - np.cos(angle_rad)) * cross @ cross


def _as_like(values, points: Array) -> Array:
    """A constant vector/matrix in the library, dtype and device of `points`."""
    if isinstance(points, torch.Tensor):
        return torch.as_tensor(np.asarray(values), dtype=points.dtype, device=points.device)
    return np.asarray(values, dtype=points.dtype)


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A named analytic solid in the unit-sphere space."""

    name: str
    """Name used on the command line and in scene.json."""
    sdf_fn: SdfFn
    """Signed distance [..., 3] -> [...], negative inside, 1-Lipschitz, zero on the surface."""
    bounding_radius: float
    """Every surface point lies within this distance of the origin."""
    albedo_fn: Optional[Callable[[Array], Array]] = None
    """Its own surface colour [..., 3] -> [..., 3] in [0, 1], if it has one (else `synthetic.albedo`)."""

    def sdf(self, points_unit: Array) -> Array:
        """Signed distance of points [..., 3] (numpy or torch) in the unit-sphere space."""
        return self.sdf_fn(points_unit)


def sphere(radius: float = 0.6) -> Shape:
    """A centred sphere."""
    return Shape("sphere", lambda p: sphere_sdf(p, radius), bounding_radius=radius)


def torus(major_radius: float = 0.45, minor_radius: float = 0.17) -> Shape:
    """A torus lying in the xy plane (hole along z)."""
    return Shape(
        "torus", lambda p: torus_sdf(p, major_radius, minor_radius), bounding_radius=major_radius + minor_radius
    )


def rounded_box(half_extents: Sequence[float] = (0.45, 0.35, 0.3), corner_radius: float = 0.08) -> Shape:
    """An axis-aligned box with rounded edges; flat faces and sharp-ish curvature changes."""
    bounding_radius = float(np.linalg.norm(np.asarray(half_extents) - corner_radius)) + corner_radius
    return Shape("rounded_box", lambda p: rounded_box_sdf(p, half_extents, corner_radius), bounding_radius)


_COMPOSITE_TORUS_ROTATION = rotation_about_axis((1.0, 0.4, 0.0), np.deg2rad(28.0))
_COMPOSITE_TORUS_CENTER = (0.05, -0.02, -0.08)
_COMPOSITE_BALL_CENTER = (-0.18, 0.2, 0.22)
_COMPOSITE_ROD_START = (0.1, -0.28, 0.05)
_COMPOSITE_ROD_END = (0.36, 0.22, 0.34)


def _composite_sdf(points: Array) -> Array:
    # points in the torus frame: x_torus = R^T (x - c), written row-wise as (x - c) @ R
    torus_points = (points - _as_like(_COMPOSITE_TORUS_CENTER, points)) @ _as_like(_COMPOSITE_TORUS_ROTATION, points)
    ring = torus_sdf(torus_points, 0.38, 0.12)
    ball = sphere_sdf(points, 0.24, _COMPOSITE_BALL_CENTER)
    rod = capsule_sdf(points, _COMPOSITE_ROD_START, _COMPOSITE_ROD_END, 0.07)
    return smooth_union(smooth_union(ring, ball, 0.1), rod, 0.06)


def composite() -> Shape:
    """The default test object: a tilted torus, a ball sitting off-axis on it and a slanted rod.

    Non-convex (the torus hole), without any symmetry, clearly not a sphere; all of it lies within
    0.65 of the origin.
    """
    return Shape("composite", _composite_sdf, bounding_radius=0.65)


# The building: a house whose cross-section (y, z) is a pentagon (walls and a 45-degree gable roof) extruded
# along x, a crow-stepped gable wall at its +x end, a square chimney through the roof, window recesses in the
# -y wall and a door recess in the +y wall. Unit-sphere units; z is up.
BUILDING_HALF_LENGTH = 0.46
BUILDING_PROFILE = ((-0.30, -0.42), (0.30, -0.42), (0.30, 0.04), (0.0, 0.34), (-0.30, 0.04))
BUILDING_GABLE_X = (0.46, 0.50)
BUILDING_GABLE_PROFILE = (
    (-0.30, -0.42), (0.30, -0.42), (0.30, 0.18), (0.20, 0.18), (0.20, 0.28), (0.10, 0.28), (0.10, 0.40),
    (-0.10, 0.40), (-0.10, 0.28), (-0.20, 0.28), (-0.20, 0.18), (-0.30, 0.18),
)
BUILDING_CHIMNEY = ((-0.22, 0.12, 0.28), (0.025, 0.025, 0.12))
"""Centre and half extents of the chimney: 0.05 wide, its top 0.40 high."""
BUILDING_RECESS_DEPTH = 0.045
BUILDING_RECESSES = (
    ((-0.25, -0.30, -0.12), (0.07, BUILDING_RECESS_DEPTH, 0.07)),
    ((0.0, -0.30, -0.12), (0.07, BUILDING_RECESS_DEPTH, 0.07)),
    ((0.25, -0.30, -0.12), (0.07, BUILDING_RECESS_DEPTH, 0.07)),
    ((0.10, 0.30, -0.26), (0.08, BUILDING_RECESS_DEPTH, 0.12)),
)
"""Centre and half extents of the boxes cut from the walls: three windows in the -y wall, a door in the +y wall."""


def _building_sdf(points: Array, recesses: Sequence = BUILDING_RECESSES) -> Array:
    xp = _xp(points)
    house = extrusion_sdf(polygon_sdf(points[..., 1:], BUILDING_PROFILE), points[..., 0], BUILDING_HALF_LENGTH)
    gable_centre = 0.5 * (BUILDING_GABLE_X[0] + BUILDING_GABLE_X[1])
    gable_half = 0.5 * (BUILDING_GABLE_X[1] - BUILDING_GABLE_X[0])
    gable = extrusion_sdf(polygon_sdf(points[..., 1:], BUILDING_GABLE_PROFILE), points[..., 0] - gable_centre, gable_half)
    chimney = box_sdf(points, BUILDING_CHIMNEY[1], BUILDING_CHIMNEY[0])
    solid = xp.minimum(xp.minimum(house, gable), chimney)
    for center, half_extents in recesses:
        solid = xp.maximum(solid, -box_sdf(points, half_extents, center))
    return solid


def building_albedo(points_unit: Array) -> Array:
    """Colours of the building, values in [0.04, 0.9], with detail down to about a pixel of a DTU-scale view
    (1/180 of a unit): brick courses 0.04 high of bricks 0.09 long in running bond, with 0.006-wide mortar
    joints, on the walls, the gable and the chimney; darker tiles in courses 0.035 apart on the roof; dark glass
    in the windows and wood in the door; every brick and tile tinted on its own, and a fine grain over all."""
    xp = _xp(points_unit)
    x, y, z = points_unit[..., 0], points_unit[..., 1], points_unit[..., 2]

    def fraction(values):
        return values - xp.floor(values)

    def tint(a, b):  # a pseudo-random value in [0, 1) per integer pair
        return fraction(xp.sin(12.9898 * a + 78.233 * b) * 43758.5453)

    course = xp.floor(z / 0.04)
    bond = 0.5 * (course - 2.0 * xp.floor(course / 2.0))
    along = (x + y) / 0.09 + bond  # runs along every vertical wall, whichever way it faces
    brick = xp.floor(along)
    joint = (fraction(z / 0.04) < 0.15) | (fraction(along) < 0.067)
    brick_shade = 0.8 + 0.35 * tint(brick, course)
    brick_rgb = _stack_channels(xp, 0.62 * brick_shade, 0.30 * brick_shade, 0.20 * brick_shade)
    mortar_rgb = _stack_channels(xp, 0.78 + 0.0 * x, 0.76 + 0.0 * x, 0.70 + 0.0 * x)
    wall = xp.where(joint[..., None], mortar_rgb, brick_rgb)

    tile_course = xp.floor(z / 0.035)
    tile_along = x / 0.06 + 0.5 * (tile_course - 2.0 * xp.floor(tile_course / 2.0))
    tile_gap = (fraction(z / 0.035) < 0.12) | (fraction(tile_along) < 0.08)
    tile_shade = (0.7 + 0.4 * tint(xp.floor(tile_along), tile_course)) * xp.where(tile_gap, 0.45, 1.0)
    roof = _stack_channels(xp, 0.34 * tile_shade, 0.22 * tile_shade, 0.20 * tile_shade)

    on_roof = (z > 0.045) & (x < BUILDING_GABLE_X[0] - 1e-3) & (box_sdf(points_unit, (0.03, 0.03, 0.13), BUILDING_CHIMNEY[0]) > 0.0)
    colour = xp.where(on_roof[..., None], roof, wall)
    glass = _stack_channels(xp, 0.08 + 0.0 * x, 0.12 + 0.0 * x, 0.18 + 0.06 * xp.sin(40.0 * (x + z)))
    wood = _stack_channels(xp, 0.45 + 0.08 * xp.sin(150.0 * x), 0.30 + 0.05 * xp.sin(150.0 * x), 0.15 + 0.0 * x)
    for center, half_extents in BUILDING_RECESSES:
        # the back of a recess (its reveals stay brick): glass in the -y wall's windows, wood in the +y door
        back = abs(center[1]) - half_extents[1] + 2e-3
        in_recess = box_sdf(points_unit, half_extents, center) < 1e-3
        filling = glass if center[1] < 0.0 else wood
        colour = xp.where((in_recess & (xp.abs(y) < back))[..., None], filling, colour)
    grain = 0.92 + 0.08 * xp.sin(211.0 * x + 173.0 * y + 97.0 * z) * xp.sin(157.0 * x - 139.0 * y + 191.0 * z)
    return (colour * grain[..., None]).clip(0.04, 0.9)


def _stack_channels(xp, red: Array, green: Array, blue: Array) -> Array:
    return xp.stack([red, green, blue], -1) if xp is torch else np.stack([red, green, blue], -1)


def building(recesses: Sequence = BUILDING_RECESSES) -> Shape:
    """A small house at the scale of a DTU object: flat walls meeting at sharp edges, a 45-degree gable roof, a
    crow-stepped gable wall, a thin chimney (0.05 wide), window and door recesses 0.045 deep (concavities),
    and a brick-and-tile albedo (`building_albedo`).

    The house, the gable and the chimney are exact distances (a polygon extruded, a box), joined by `min`:
    exact wherever one part is nearest from outside. The recesses are cut by `max(f, -box)`, a 1-Lipschitz
    bound that is exact inside a recess, on every face and wherever the cut is not the nearest feature; the zero
    set is exactly the solid's surface everywhere. `recesses` (centre, half extents) replaces the cut boxes
    (`()`: walls without windows or door, the shape a reconstruction that cannot see into the recesses would give).
    """
    return Shape("building", functools.partial(_building_sdf, recesses=tuple(recesses)), bounding_radius=0.73, albedo_fn=building_albedo)


BUILDING_PARTS = (
    "roof, front slope", "roof, back slope", "front wall", "windows", "back wall", "door", "left end wall",
    "gable wall", "gable steps and sides", "chimney", "base",
)
"""The parts `building_part` names, in the order benchmarks list them."""


def building_part(points: Float[np.ndarray, "n 3"]) -> np.ndarray:
    """Which part of the building each point on or near its surface belongs to (a name of `BUILDING_PARTS`), for
    benchmarks that say where a reconstruction's error lies. The front wall faces -y, the gable wall +x; a window or
    the door includes its reveals and the wall 0.01 around it."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    eaves = BUILDING_PROFILE[2][1]
    part = np.full(len(points), "base", dtype=object)
    part[(y < 0.0) & (z > -0.41)] = "front wall"
    part[(y >= 0.0) & (z > -0.41)] = "back wall"
    part[(z > eaves - 0.005) & (y < 0.0)] = "roof, front slope"
    part[(z > eaves - 0.005) & (y >= 0.0)] = "roof, back slope"
    part[x < -BUILDING_HALF_LENGTH + 0.015] = "left end wall"
    part[x > BUILDING_GABLE_X[0] - 0.005] = "gable steps and sides"
    part[x > BUILDING_GABLE_X[1] - 0.005] = "gable wall"
    part[z < BUILDING_PROFILE[0][1] + 0.005] = "base"
    center, half_extents = BUILDING_CHIMNEY
    part[np.all(np.abs(points - np.asarray(center)) <= np.asarray(half_extents) + 0.005, axis=1)] = "chimney"
    for center, half_extents in BUILDING_RECESSES:
        margin = np.array([0.01, 0.0, 0.01])
        inside = np.all(np.abs(points - np.asarray(center)) <= np.asarray(half_extents) + margin, axis=1)
        part[inside] = "windows" if center[1] < 0.0 else "door"
    return part


SHAPES: Dict[str, Callable[[], Shape]] = {
    "composite": composite,
    "sphere": sphere,
    "torus": torus,
    "rounded_box": rounded_box,
    "building": building,
}
DEFAULT_SHAPE = "composite"


def get_shape(name: str) -> Shape:
    """The shape registered under `name` with its default parameters."""
    if name not in SHAPES:
        raise UserInputError(f"Unknown shape '{name}': choose one of {', '.join(sorted(SHAPES))}.")
    return SHAPES[name]()


def scaled(shape: Shape, factor: float) -> Shape:
    """The shape scaled about the origin: f_s(x) = s f(x / s) (still exact when f is)."""
    if factor <= 0:
        raise ValueError(f"scale factor must be positive, got {factor}")
    return Shape(
        f"{shape.name}_x{factor:g}",
        lambda p: factor * shape.sdf_fn(p / factor),
        bounding_radius=shape.bounding_radius * factor,
    )


# ---------------------------------------------------------------------------------------------
# Ground-truth surface
# ---------------------------------------------------------------------------------------------


def sdf_gradient(shape: Shape, points_unit: Float[np.ndarray, "*batch 3"], eps: float = 1e-6) -> np.ndarray:
    """Central differences: df/dx_i ~ (f(x + eps e_i) - f(x - eps e_i)) / (2 eps), in float64."""
    points = np.asarray(points_unit, dtype=np.float64)
    offsets = np.eye(3) * eps
    columns = [(shape.sdf(points + offset) - shape.sdf(points - offset)) / (2.0 * eps) for offset in offsets]
    return np.stack(columns, -1)


def project_to_surface(
    shape: Shape, points_unit: Float[np.ndarray, "*batch 3"], num_steps: int = 3
) -> Float[np.ndarray, "*batch 3"]:
    """Newton steps onto the zero set: x <- x - f(x) grad f / |grad f|^2 (one step is exact for a true SDF)."""
    points = np.asarray(points_unit, dtype=np.float64).copy()
    for _ in range(num_steps):
        gradient = sdf_gradient(shape, points)
        squared_norm = np.maximum((gradient**2).sum(-1, keepdims=True), 1e-12)
        points -= shape.sdf(points)[..., None] * gradient / squared_norm
    return points


def sdf_grid(
    shape: Shape, resolution: int, half_extent: float, block: int = 4
) -> Float[np.ndarray, "resolution resolution resolution"]:
    """SDF sampled on the grid linspace(-h, h, resolution)^3, exact wherever marching cubes looks.

    A coarse grid (every `block`-th sample) is evaluated first; a fine sample whose nearest coarse
    value is farther from zero than their distance plus two cells keeps that coarse value. Because the
    SDF is 1-Lipschitz, its sign is then right and no sign change can involve it, so the extracted
    surface equals the one from evaluating every sample.
    """
    axis = np.linspace(-half_extent, half_extent, resolution)
    cell = axis[1] - axis[0]
    nearest_coarse = np.minimum(np.round(np.arange(resolution) / block).astype(int) * block, resolution - 1)
    coarse_axis = axis[np.unique(nearest_coarse)]
    coarse_index = np.searchsorted(np.unique(nearest_coarse), nearest_coarse)
    coarse_points = np.stack(np.meshgrid(coarse_axis, coarse_axis, coarse_axis, indexing="ij"), -1)
    coarse_values = shape.sdf(coarse_points)
    values = coarse_values[np.ix_(coarse_index, coarse_index, coarse_index)]
    band = (block / 2.0 * np.sqrt(3.0) + 2.0) * cell
    near = np.nonzero(np.abs(values) <= band)
    near_points = np.stack([axis[near[0]], axis[near[1]], axis[near[2]]], -1)
    values[near] = shape.sdf(near_points)
    return values


def surface_mesh(shape: Shape, resolution: int = 256, project: bool = True) -> trimesh.Trimesh:
    """The exact surface as a triangle mesh in the unit-sphere space.

    Marching cubes of the analytic SDF on a `resolution`^3 grid over the shape's bounding cube,
    then (if `project`) every vertex moved onto the zero set with Newton steps, so vertices lie on
    the true surface to ~1e-9 and only the flat triangles between them approximate it.
    """
    half_extent = shape.bounding_radius * 1.05 + 4.0 * (2.0 * shape.bounding_radius / resolution)
    values = sdf_grid(shape, resolution, half_extent)
    cell = 2.0 * half_extent / (resolution - 1)
    vertices, faces, _, _ = marching_cubes(values, level=0.0, spacing=(cell, cell, cell))
    vertices = vertices - half_extent
    if project:
        vertices = project_to_surface(shape, vertices)
    # skimage's default winding already gives outward normals for values increasing outwards
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
