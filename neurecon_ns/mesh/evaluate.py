"""Geometry of a reconstructed mesh against a reference surface.

Both surfaces are sampled (uniformly by area, or on a grid of given spacing); with `P` the predicted points and
`G` the reference points:

- accuracy     `mean_{p in P} min_{g in G} |p - g|`  (how far the prediction strays from the truth)
- completeness `mean_{g in G} min_{p in P} |g - p|`  (how much of the truth the prediction covers)
- Chamfer      `(accuracy + completeness) / 2`, the number DTU results are reported with
- F-score at `tau`: precision = share of `P` closer than `tau` to `G`, recall = share of `G` closer than `tau`
  to `P`, `F = 2 precision recall / (precision + recall)` (Knapitsch et al. 2017)
- normal consistency: mean `|n_p . n_g|` over nearest pairs, both directions (Mescheder et al. 2019)

Between two meshes the distances can also be taken from each side's points to the other side's surface itself
(`compare_meshes(..., to_surface=True)`, the closest point on its triangles) rather than to a sample of it. A
sample of N points leaves a gap of order `sqrt(area / N)` between a point and the nearest sampled one even on the
same surface (two samplings of one mesh of the DTU-scale building, 100k points each, read 0.4 px at the object),
and that floor adds to every distance; to the surface, the same mesh reads 0.

With an outlier cut-off `d_max`, distances at or beyond it are left out of the accuracy and completeness means
(DTU: 20 mm), not out of the F-score shares. Distances are in the meshes' own units: compare meshes in the same
space. The DTU protocol, with its observation masks, is in `dtu_eval.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import trimesh
from jaxtyping import Float, Int
from scipy.sparse import csr_matrix
from scipy.spatial import cKDTree

from neurecon_ns.errors import UserInputError


@dataclass
class GeometryReport:
    """Distances between a predicted and a reference surface, in their units."""

    accuracy: float
    """Mean distance from predicted points to the reference."""
    completeness: float
    """Mean distance from reference points to the prediction."""
    chamfer: float
    """Mean of accuracy and completeness."""
    normal_consistency: Optional[float]
    """Mean |cos| between normals of nearest pairs (None when a side has no normals)."""
    precision: Dict[float, float] = field(default_factory=dict)
    """Per threshold: share of predicted points closer than it to the reference."""
    recall: Dict[float, float] = field(default_factory=dict)
    """Per threshold: share of reference points closer than it to the prediction."""
    fscore: Dict[float, float] = field(default_factory=dict)
    """Per threshold: harmonic mean of precision and recall."""
    num_predicted_points: int = 0
    num_reference_points: int = 0
    max_distance: Optional[float] = None
    """Outlier cut-off of the accuracy and completeness means (None: every distance counts)."""
    counts: Dict[str, int] = field(default_factory=dict)
    """Points kept at each step of a filtering protocol (DTU), in order."""

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------------
# reading surfaces


@dataclass
class Surface:
    """A mesh or a point cloud read from a file."""

    path: Path
    vertices: Float[np.ndarray, "num_vertices 3"]
    faces: Optional[Int[np.ndarray, "num_faces 3"]]
    """None for a point cloud."""

    @property
    def mesh(self) -> trimesh.Trimesh:
        assert self.faces is not None
        return trimesh.Trimesh(self.vertices, self.faces, process=False)


def load_surface(path: Union[str, Path], role: str = "mesh") -> Surface:
    """Read a mesh (.ply, .obj, .glb, .off, .stl) or a point cloud, with one-sentence errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: {role} file not found; check the path.")
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as error:
        raise UserInputError(f"{path}: not a readable mesh or point cloud ({type(error).__name__}: {error}); re-export it as .ply.") from None
    if isinstance(loaded, trimesh.Scene):
        geometries = [g for g in loaded.geometry.values() if isinstance(g, (trimesh.Trimesh, trimesh.PointCloud))]
        meshes = [g for g in geometries if isinstance(g, trimesh.Trimesh)]
        loaded = trimesh.util.concatenate(meshes) if meshes else (geometries[0] if geometries else None)
    if isinstance(loaded, trimesh.Trimesh) and len(loaded.faces) > 0:
        surface = Surface(path, np.asarray(loaded.vertices, dtype=np.float64), np.asarray(loaded.faces, dtype=np.int64))
    elif isinstance(loaded, (trimesh.Trimesh, trimesh.PointCloud)) and len(loaded.vertices) > 0:
        surface = Surface(path, np.asarray(loaded.vertices, dtype=np.float64), None)
    else:
        raise UserInputError(f"{path}: the {role} is empty (no vertices or faces); extract it again.")
    finite = np.isfinite(surface.vertices).all(axis=1)
    if not finite.all():
        raise UserInputError(
            f"{path}: {int((~finite).sum())} of {len(finite)} vertices of the {role} are NaN or infinite; "
            "extract it again from a model that has not diverged."
        )
    return surface


# ---------------------------------------------------------------------------------------------------------------------
# sampling


def sample_surface(
    mesh: trimesh.Trimesh, num_points: int, seed: int = 0
) -> Tuple[Float[np.ndarray, "num_points 3"], Float[np.ndarray, "num_points 3"]]:
    """Points drawn uniformly by area on the mesh, with the normals of their faces."""
    points, face_index = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    return np.asarray(points, dtype=np.float64), np.asarray(mesh.face_normals[face_index], dtype=np.float64)


def sample_triangle_grids(
    vertices: Float[np.ndarray, "num_vertices 3"], faces: Int[np.ndarray, "num_faces 3"], spacing: float
) -> Float[np.ndarray, "num_points 3"]:
    """The mesh's vertices plus, in every triangle, a grid of points about `spacing` apart (DTU's mesh sampling).

    A triangle `a + s e1 + t e2` (`e1 = b - a`, `e2 = c - a`) gets `n_i = floor(|e_i| / h)` steps per edge with
    `h = spacing * sqrt(|e1| |e2| / |e1 x e2|)`, which shrinks the steps of thin triangles so that the points
    stay about `spacing` apart across them, and the points `s = (i + 1/2) / n1`, `t = (j + 1/2) / n2` with
    `s + t < 1`. Triangles of zero area get none.
    """
    corner = vertices[faces[:, 0]]
    edge_1 = vertices[faces[:, 1]] - corner
    edge_2 = vertices[faces[:, 2]] - corner
    length_1 = np.linalg.norm(edge_1, axis=-1)
    length_2 = np.linalg.norm(edge_2, axis=-1)
    double_area = np.linalg.norm(np.cross(edge_1, edge_2), axis=-1)
    keep = double_area > 0
    corner, edge_1, edge_2 = corner[keep], edge_1[keep], edge_2[keep]
    length_1, length_2, double_area = length_1[keep], length_2[keep], double_area[keep]
    step = spacing * np.sqrt(length_1 * length_2 / double_area)
    steps = np.stack([np.floor(length_1 / step), np.floor(length_2 / step)], axis=-1).astype(np.int64)
    samples = [np.asarray(vertices, dtype=np.float64)]
    # triangles with the same step counts share one barycentric grid
    pairs, group = np.unique(steps, axis=0, return_inverse=True)
    for pair_index, (n_1, n_2) in enumerate(pairs):
        if n_1 == 0 or n_2 == 0:
            continue
        s, t = np.meshgrid((np.arange(n_1 + 1) + 0.5) / n_1, (np.arange(n_2 + 1) + 0.5) / n_2, indexing="ij")
        inside = s + t < 1
        s, t = s[inside], t[inside]
        members = np.flatnonzero(group.reshape(-1) == pair_index)
        for chunk in np.array_split(members, max(1, math.ceil(len(members) * len(s) / 2**22))):
            points = corner[chunk, None] + edge_1[chunk, None] * s[:, None] + edge_2[chunk, None] * t[:, None]
            samples.append(points.reshape(-1, 3))
    return np.concatenate(samples)


def radius_downsample(
    points: Float[np.ndarray, "num_points 3"], radius: float, seed: Optional[int] = 0
) -> Float[np.ndarray, "num_kept 3"]:
    """Thin the points so that no two kept ones are within `radius`: visit them in a random order (`seed`) and
    keep a point unless an already kept one is within `radius` of it (DTU's downsampling)."""
    order = np.random.default_rng(seed).permutation(len(points))
    shuffled = points[order]
    pairs = cKDTree(shuffled).query_pairs(radius, output_type="ndarray")
    if len(pairs) == 0:
        return shuffled
    # neighbours that come later in the visiting order: a kept point removes them
    later = csr_matrix((np.ones(len(pairs), dtype=bool), (pairs.min(axis=1), pairs.max(axis=1))), shape=(len(points),) * 2)
    keep = np.ones(len(points), dtype=bool)
    indptr, indices = later.indptr, later.indices
    for index in np.flatnonzero(np.diff(indptr)):
        if keep[index]:
            keep[indices[indptr[index] : indptr[index + 1]]] = False
    return shuffled[keep]


def sample_by_spacing(surface: Surface, spacing: float, seed: int = 0) -> Float[np.ndarray, "num_points 3"]:
    """A mesh sampled on triangle grids of `spacing`, or a point cloud as it is, thinned at `spacing`."""
    points = surface.vertices if surface.faces is None else sample_triangle_grids(surface.vertices, surface.faces, spacing)
    return radius_downsample(points, spacing, seed)


# ---------------------------------------------------------------------------------------------------------------------
# distances


def nearest_distances(
    query: Float[np.ndarray, "num_query 3"], reference: Float[np.ndarray, "num_reference 3"]
) -> Tuple[Float[np.ndarray, " num_query"], np.ndarray]:
    """Distance from each query point to its nearest reference point, and that point's index."""
    distances, index = cKDTree(reference).query(query, k=1, workers=-1)
    return distances, index


def surface_distances(
    query: Float[np.ndarray, "num_query 3"], mesh: trimesh.Trimesh, chunk_size: int = 20_000
) -> Tuple[Float[np.ndarray, " num_query"], Int[np.ndarray, " num_query"]]:
    """Distance from each query point to the closest point of the mesh's triangles, and that triangle's index."""
    distances, faces = np.empty(len(query)), np.empty(len(query), dtype=np.int64)
    for start in range(0, len(query), chunk_size):
        stop = min(start + chunk_size, len(query))
        _, distances[start:stop], faces[start:stop] = trimesh.proximity.closest_point(mesh, query[start:stop])
    return distances, faces


def mean_normal_agreement(
    predicted_normals: Float[np.ndarray, "num_predicted 3"],
    reference_normals_at_predicted: Float[np.ndarray, "num_predicted 3"],
    reference_normals: Float[np.ndarray, "num_reference 3"],
    predicted_normals_at_reference: Float[np.ndarray, "num_reference 3"],
) -> float:
    """Normal consistency: the mean `|n_p . n_g|` of each side's normals against the other side's normal where it is
    nearest, averaged over the two directions."""
    forward = np.abs((predicted_normals * reference_normals_at_predicted).sum(-1)).mean()
    backward = np.abs((reference_normals * predicted_normals_at_reference).sum(-1)).mean()
    return float((forward + backward) / 2)


def mean_within(distances: Float[np.ndarray, " num"], max_distance: Optional[float]) -> float:
    """Mean of the distances below `max_distance` (all of them when None); NaN when none is left."""
    kept = distances if max_distance is None else distances[distances < max_distance]
    return float(kept.mean()) if len(kept) else float("nan")


def report_from_distances(
    to_reference: Float[np.ndarray, " num_predicted"],
    to_predicted: Float[np.ndarray, " num_reference"],
    thresholds: Sequence[float] = (),
    max_distance: Optional[float] = None,
    normal_consistency: Optional[float] = None,
) -> GeometryReport:
    """Accuracy, completeness, Chamfer and F-scores from the two sets of nearest distances."""
    accuracy, completeness = mean_within(to_reference, max_distance), mean_within(to_predicted, max_distance)
    report = GeometryReport(
        accuracy=accuracy,
        completeness=completeness,
        chamfer=(accuracy + completeness) / 2,
        normal_consistency=normal_consistency,
        num_predicted_points=len(to_reference),
        num_reference_points=len(to_predicted),
        max_distance=max_distance,
    )
    for tau in thresholds:
        tau = float(tau)
        precision = float((to_reference < tau).mean())
        recall = float((to_predicted < tau).mean())
        report.precision[tau], report.recall[tau] = precision, recall
        report.fscore[tau] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return report


def compare_point_sets(
    predicted: Float[np.ndarray, "num_predicted 3"],
    reference: Float[np.ndarray, "num_reference 3"],
    thresholds: Sequence[float] = (),
    predicted_normals: Optional[np.ndarray] = None,
    reference_normals: Optional[np.ndarray] = None,
    max_distance: Optional[float] = None,
) -> GeometryReport:
    """The report for two point sets (see the module docstring)."""
    to_reference, reference_index = nearest_distances(predicted, reference)
    to_predicted, predicted_index = nearest_distances(reference, predicted)
    normal_consistency = None
    if predicted_normals is not None and reference_normals is not None:
        normal_consistency = mean_normal_agreement(
            predicted_normals, reference_normals[reference_index], reference_normals, predicted_normals[predicted_index]
        )
    return report_from_distances(to_reference, to_predicted, thresholds, max_distance, normal_consistency)


def compare_points_to_meshes(
    predicted_points: Float[np.ndarray, "num_predicted 3"],
    reference_points: Float[np.ndarray, "num_reference 3"],
    predicted: trimesh.Trimesh,
    reference: trimesh.Trimesh,
    thresholds: Sequence[float] = (),
    predicted_normals: Optional[np.ndarray] = None,
    reference_normals: Optional[np.ndarray] = None,
    max_distance: Optional[float] = None,
) -> GeometryReport:
    """The report with each side's points measured to the other side's triangles; the normals of nearest pairs are
    the points' own and those of the triangles they are closest to."""
    to_reference, reference_faces = surface_distances(predicted_points, reference)
    to_predicted, predicted_faces = surface_distances(reference_points, predicted)
    normal_consistency = None
    if predicted_normals is not None and reference_normals is not None:
        normal_consistency = mean_normal_agreement(
            predicted_normals, reference.face_normals[reference_faces], reference_normals, predicted.face_normals[predicted_faces]
        )
    return report_from_distances(to_reference, to_predicted, thresholds, max_distance, normal_consistency)


def compare_meshes(
    predicted: trimesh.Trimesh,
    reference: trimesh.Trimesh,
    num_points: int = 100_000,
    thresholds: Sequence[float] = (),
    max_distance: Optional[float] = None,
    seed: int = 0,
    to_surface: bool = False,
) -> GeometryReport:
    """Sample both meshes with `num_points` points each and compare them (see the module docstring); with
    `to_surface`, each side's points are measured to the other side's triangles rather than to its points."""
    predicted_points, predicted_normals = sample_surface(predicted, num_points, seed)
    reference_points, reference_normals = sample_surface(reference, num_points, seed + 1)
    if to_surface:
        return compare_points_to_meshes(
            predicted_points, reference_points, predicted, reference, thresholds, predicted_normals, reference_normals, max_distance
        )
    return compare_point_sets(
        predicted_points, reference_points, thresholds, predicted_normals, reference_normals, max_distance
    )


def compare_surfaces(
    predicted: Surface,
    reference: Surface,
    num_points: int = 200_000,
    spacing: Optional[float] = None,
    thresholds: Sequence[float] = (),
    max_distance: Optional[float] = None,
    seed: int = 0,
    to_surface: bool = False,
) -> GeometryReport:
    """Compare meshes or point clouds: meshes are sampled with `num_points` points by area (with normals), or
    on grids of `spacing` then thinned at `spacing` (no normals); point clouds are taken as they are. With
    `to_surface` (two meshes only) each side's points are measured to the other side's triangles."""
    if to_surface:
        for surface in (predicted, reference):
            if surface.faces is None:
                raise UserInputError(f"{surface.path}: a point cloud has no surface to measure to; drop --to-surface or give a mesh.")

    def points_and_normals(surface: Surface, surface_seed: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        if spacing is not None:
            return sample_by_spacing(surface, spacing, surface_seed), None
        if surface.faces is None:
            return surface.vertices, None
        return sample_surface(surface.mesh, num_points, surface_seed)

    predicted_points, predicted_normals = points_and_normals(predicted, seed)
    reference_points, reference_normals = points_and_normals(reference, seed + 1)
    if to_surface:
        return compare_points_to_meshes(
            predicted_points, reference_points, predicted.mesh, reference.mesh, thresholds, predicted_normals, reference_normals, max_distance
        )
    return compare_point_sets(
        predicted_points, reference_points, thresholds, predicted_normals, reference_normals, max_distance
    )


def default_thresholds(reference: Surface) -> Tuple[float, ...]:
    """F-score thresholds when none are given: 0.5%, 1% and 2% of the reference's bounding-box diagonal."""
    diagonal = float(np.linalg.norm(reference.vertices.max(axis=0) - reference.vertices.min(axis=0)))
    return tuple(float(f"{fraction * diagonal:.3g}") for fraction in (0.005, 0.01, 0.02))
