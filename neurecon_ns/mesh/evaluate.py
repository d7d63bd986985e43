"""Geometry of a reconstructed mesh against a reference surface.

Both surfaces are sampled uniformly by area; with `P` the predicted points and `G` the reference points:

- accuracy     `mean_{p in P} min_{g in G} |p - g|`  (how far the prediction strays from the truth)
- completeness `mean_{g in G} min_{p in P} |g - p|`  (how much of the truth the prediction covers)
- Chamfer      `(accuracy + completeness) / 2`, the number DTU results are reported with
- F-score at `tau`: precision = share of `P` within `tau` of `G`, recall = share of `G` within `tau` of `P`,
  `F = 2 precision recall / (precision + recall)` (Knapitsch et al. 2017)
- normal consistency: mean `|n_p . n_g|` over nearest pairs, both directions (Mescheder et al. 2019)

Distances are in the meshes' own units: compare meshes in the same space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import trimesh
from jaxtyping import Float
from scipy.spatial import cKDTree


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
    """Per threshold: share of predicted points within it of the reference."""
    recall: Dict[float, float] = field(default_factory=dict)
    """Per threshold: share of reference points within it of the prediction."""
    fscore: Dict[float, float] = field(default_factory=dict)
    """Per threshold: harmonic mean of precision and recall."""
    num_predicted_points: int = 0
    num_reference_points: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def sample_surface(
    mesh: trimesh.Trimesh, num_points: int, seed: int = 0
) -> Tuple[Float[np.ndarray, "num_points 3"], Float[np.ndarray, "num_points 3"]]:
    """Points drawn uniformly by area on the mesh, with the normals of their faces."""
    points, face_index = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    return np.asarray(points, dtype=np.float64), np.asarray(mesh.face_normals[face_index], dtype=np.float64)


def nearest_distances(
    query: Float[np.ndarray, "num_query 3"], reference: Float[np.ndarray, "num_reference 3"]
) -> Tuple[Float[np.ndarray, " num_query"], np.ndarray]:
    """Distance from each query point to its nearest reference point, and that point's index."""
    distances, index = cKDTree(reference).query(query, k=1, workers=-1)
    return distances, index


def compare_point_sets(
    predicted: Float[np.ndarray, "num_predicted 3"],
    reference: Float[np.ndarray, "num_reference 3"],
    thresholds: Sequence[float] = (),
    predicted_normals: Optional[np.ndarray] = None,
    reference_normals: Optional[np.ndarray] = None,
    max_distance: Optional[float] = None,
) -> GeometryReport:
    """The report for two point sets; distances at or beyond `max_distance` are dropped from the means
    (the DTU protocol's outlier cut-off), not from the F-score shares."""
    to_reference, reference_index = nearest_distances(predicted, reference)
    to_predicted, predicted_index = nearest_distances(reference, predicted)

    def mean_within(distances: np.ndarray) -> float:
        kept = distances if max_distance is None else distances[distances < max_distance]
        return float(kept.mean()) if len(kept) else float("nan")

    accuracy, completeness = mean_within(to_reference), mean_within(to_predicted)
    normal_consistency = None
    if predicted_normals is not None and reference_normals is not None:
        cos_forward = np.abs((predicted_normals * reference_normals[reference_index]).sum(-1))
        cos_backward = np.abs((reference_normals * predicted_normals[predicted_index]).sum(-1))
        normal_consistency = float((cos_forward.mean() + cos_backward.mean()) / 2)
    report = GeometryReport(
        accuracy=accuracy,
        completeness=completeness,
        chamfer=(accuracy + completeness) / 2,
        normal_consistency=normal_consistency,
        num_predicted_points=len(predicted),
        num_reference_points=len(reference),
    )
    for tau in thresholds:
        precision = float((to_reference < tau).mean())
        recall = float((to_predicted < tau).mean())
        report.precision[tau], report.recall[tau] = precision, recall
        report.fscore[tau] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return report


def compare_meshes(
    predicted: trimesh.Trimesh,
    reference: trimesh.Trimesh,
    num_points: int = 100_000,
    thresholds: Sequence[float] = (),
    max_distance: Optional[float] = None,
    seed: int = 0,
) -> GeometryReport:
    """Sample both meshes with `num_points` points each and compare them (see the module docstring)."""
    predicted_points, predicted_normals = sample_surface(predicted, num_points, seed)
    reference_points, reference_normals = sample_surface(reference, num_points, seed + 1)
    return compare_point_sets(
        predicted_points, reference_points, thresholds, predicted_normals, reference_normals, max_distance
    )
