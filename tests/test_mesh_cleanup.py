"""Simplification, removal of floaters and hole filling on analytic shapes."""

import numpy as np
import pytest
import torch
import trimesh

from neurecon_ns.mesh.cleanup import (
    boundary_loops,
    fill_holes,
    non_manifold_edge_count,
    remove_small_components,
    simplify,
)
from neurecon_ns.mesh.extract import extract_level_set

TORUS_RADII = (0.5, 0.2)


def torus_sdf(points):
    ring = torch.sqrt(points[..., 0] ** 2 + points[..., 1] ** 2) - TORUS_RADII[0]
    return torch.sqrt(ring**2 + points[..., 2] ** 2) - TORUS_RADII[1]


@pytest.fixture(scope="module")
def torus():
    """About 90k faces, within a hundredth of a voxel of the exact torus."""
    return extract_level_set(torus_sdf, [-0.75] * 3, [0.75] * 3, 120, progress=False)


def test_simplification_stays_close_to_the_shape_and_keeps_it_manifold(torus):
    simplified, report = simplify(torus, 3000)
    assert len(torus.faces) > 60_000
    assert 2900 <= len(simplified.faces) <= 3000 and report.faces_after == len(simplified.faces)
    # closed, manifold, same genus (a torus: V - E + F = 0)
    assert simplified.is_watertight and simplified.is_winding_consistent
    assert non_manifold_edge_count(simplified.faces) == 0
    assert simplified.euler_number == torus.euler_number == 0
    # every vertex near the exact torus, and every point of the original near the simplified mesh:
    # both directions of the Hausdorff distance below 0.006 (the tube's radius is 0.2)
    vertex_distance = torus_sdf(torch.as_tensor(np.asarray(simplified.vertices))).abs()
    assert vertex_distance.max() < 0.006
    samples, _ = trimesh.sample.sample_surface(torus, 5000, seed=0)
    _, to_simplified, _ = trimesh.proximity.closest_point(simplified, samples)
    assert to_simplified.max() < 0.006
    # not a trivially close copy: decimation moved the surface by more than rounding
    assert to_simplified.mean() > 1e-4


def test_simplification_below_the_face_count_is_a_copy(torus):
    simplified, report = simplify(torus, len(torus.faces) + 1)
    assert np.array_equal(simplified.faces, torus.faces) and "already" in report.detail


def sphere_at(center, radius, subdivisions):
    sphere = trimesh.creation.icosphere(subdivisions, radius)
    sphere.apply_translation(center)
    return sphere


def test_small_floaters_are_removed_and_the_main_part_kept():
    main = sphere_at((0, 0, 0), 1.0, 4)  # 5120 faces
    second = sphere_at((3, 0, 0), 0.8, 3)  # 1280 faces: a quarter of the main part, kept
    floaters = [sphere_at((0, 3 + k, 0), 0.05, 1) for k in range(5)]  # 80 faces each
    mesh = trimesh.util.concatenate([main, second, *floaters])
    mesh.visual.vertex_colors = np.tile([10, 20, 30, 255], (len(mesh.vertices), 1))
    cleaned, report = remove_small_components(mesh, 0.05)
    assert len(cleaned.faces) == 5120 + 1280
    assert report.line() == "small components: 6,800 -> 6,400 faces (removed 5 of 7 components smaller than 0.05 of the largest)"
    assert np.linalg.norm(cleaned.vertices, axis=1).max() < 4.0  # no vertex of a floater left
    assert (np.asarray(cleaned.visual.vertex_colors) == [10, 20, 30, 255]).all()
    only_main, _ = remove_small_components(mesh, 0.5)
    assert len(only_main.faces) == 5120


def test_small_holes_are_closed_and_large_openings_kept():
    sphere = trimesh.creation.icosphere(4)
    # two holes of one missing face each (3 edges), and the whole top cap missing (a long border)
    top = sphere.triangles_center[:, 2] > 0.9
    drop = top.copy()
    drop[np.flatnonzero(sphere.triangles_center[:, 2] < -0.5)[[0, 200]]] = True
    opened = trimesh.Trimesh(sphere.vertices, sphere.faces[~drop], process=False)
    loops = sorted(len(loop) for loop in boundary_loops(opened.faces))
    assert loops[:2] == [3, 3] and loops[2] > 12 and len(loops) == 3
    filled, report = fill_holes(opened, 12)
    assert "closed 2 holes" in report.detail
    assert sorted(len(loop) for loop in boundary_loops(filled.faces)) == [loops[2]]
    assert filled.is_winding_consistent
    everything, _ = fill_holes(opened, 1000)
    assert everything.is_watertight and everything.is_winding_consistent
    # the caps keep the outward orientation: the volume is positive and near the sphere's
    assert everything.volume == pytest.approx(sphere.volume, rel=0.02)
