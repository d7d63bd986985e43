"""Geometry metrics on surfaces with known answers, and the DTU protocol on small fabricated evaluation files."""

import numpy as np
import pytest
import trimesh
from scipy.io import savemat
from scipy.spatial import cKDTree

from neurecon_ns.errors import UserInputError
from neurecon_ns.mesh.dtu_eval import (
    above_plane,
    cull_by_scene_masks,
    evaluate_dtu,
    in_observed_voxels,
    in_padded_box,
    load_dtu_reference,
)
from neurecon_ns.mesh.evaluate import (
    compare_meshes,
    compare_point_sets,
    compare_surfaces,
    load_surface,
    radius_downsample,
    sample_triangle_grids,
)


def sphere(radius, center=(0.0, 0.0, 0.0), subdivisions=5):
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    mesh.apply_translation(center)
    return mesh


def sphere_points(radius, num_points, center=(0.0, 0.0, 0.0)):
    """Fibonacci lattice: evenly spread points exactly on the sphere."""
    index = np.arange(num_points) + 0.5
    polar = np.arccos(1 - 2 * index / num_points)
    azimuth = np.pi * (1 + 5**0.5) * index
    unit = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=-1)
    return np.asarray(center) + radius * unit


# -- generic metrics ---------------------------------------------------------------------------------


def test_chamfer_of_concentric_spheres_is_the_radius_difference():
    report = compare_meshes(sphere(1.0), sphere(1.1), num_points=50_000, thresholds=(0.09, 0.11))
    # the icosphere's faces lie at most 1.2e-4 inside its sphere (subdivision 5, radius 1.1)
    assert report.accuracy == pytest.approx(0.1, abs=2e-3)
    assert report.completeness == pytest.approx(0.1, abs=2e-3)
    assert report.chamfer == pytest.approx(0.1, abs=2e-3)
    assert report.fscore[0.09] == 0.0 and report.fscore[0.11] == 1.0
    assert report.normal_consistency == pytest.approx(1.0, abs=1e-3)


def test_distances_to_the_surface_have_no_sampling_floor():
    """Two samplings of one mesh lie a fraction of their spacing apart; measured to the triangles they lie on it. A
    box against the same box 0.01 larger reads the offset to the triangles, and more to the points."""
    box = trimesh.creation.box(extents=(1.0, 0.6, 0.4)).subdivide().subdivide()
    spacing = np.sqrt(box.area / 5_000)
    sampled = compare_meshes(box, box, num_points=5_000)
    assert sampled.chamfer > 0.2 * spacing
    exact = compare_meshes(box, box, num_points=5_000, to_surface=True)
    assert exact.chamfer == pytest.approx(0.0, abs=1e-9) and exact.normal_consistency == pytest.approx(1.0)
    larger = trimesh.creation.box(extents=(1.02, 0.62, 0.42))
    report = compare_meshes(box, larger, num_points=5_000, to_surface=True)
    # every point of either box is 0.01 from the other's faces, except within 0.01 of an edge (a small share)
    assert report.accuracy == pytest.approx(0.01, rel=0.05) and report.completeness == pytest.approx(0.01, rel=0.05)
    assert compare_meshes(box, larger, num_points=5_000).chamfer > report.chamfer + 0.1 * spacing


def test_fscore_switches_exactly_at_the_threshold():
    grid = np.stack(np.meshgrid(*[np.arange(5.0)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    shifted = grid + [0.25, 0.0, 0.0]  # every point exactly 0.25 from its partner, 0.75 from the next
    below, at, above = 0.2499999, 0.25, 0.2500001
    report = compare_point_sets(shifted, grid, thresholds=(below, at, above))
    assert report.accuracy == report.completeness == 0.25
    assert report.fscore[below] == 0.0
    assert report.fscore[at] == 0.0  # "closer than tau": a distance equal to tau does not count
    assert report.fscore[above] == 1.0
    # half the predicted points too far: precision 1/2, recall 1 -> F = 2/3
    half_far = np.concatenate([shifted, grid + [0.0, 0.0, 100.0]])
    report = compare_point_sets(half_far, grid, thresholds=(above,))
    assert report.precision[above] == 0.5 and report.recall[above] == 1.0
    assert report.fscore[above] == pytest.approx(2 / 3)


def test_outlier_cut_off_drops_far_distances_from_the_means_only():
    grid = np.stack(np.meshgrid(*[np.arange(4.0)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    predicted = np.concatenate([grid + [0.0, 0.0, 0.5], [[1.0, 1.0, 50.0]]])  # one outlier 47 above
    kept = compare_point_sets(predicted, grid, thresholds=(1.0,), max_distance=20.0)
    everything = compare_point_sets(predicted, grid, thresholds=(1.0,))
    assert kept.accuracy == pytest.approx(0.5)
    assert everything.accuracy == pytest.approx((64 * 0.5 + 47.0) / 65)
    assert kept.precision[1.0] == everything.precision[1.0] == pytest.approx(64 / 65)


def test_triangle_grid_sampling_spacing_and_count():
    vertices = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    faces = np.array([[0, 1, 2], [0, 0, 1]])  # the second one has no area: no samples
    points = sample_triangle_grids(vertices, faces, spacing=0.1)
    # 10 steps per leg, points (i + 1/2, j + 1/2) / 10 with i + j <= 8: 45 of them, plus the 4 vertices
    assert len(points) == 45 + 4
    interior = points[4:]
    assert np.all(interior[:, :2] > 0) and np.all(interior[:, :2].sum(axis=1) < 1) and np.all(interior[:, 2] == 0)
    nearest, _ = cKDTree(interior).query(interior, k=2)
    assert np.allclose(nearest[:, 1], 0.1)


def test_radius_downsample_keeps_a_maximal_set_farther_apart_than_the_radius():
    points = np.random.default_rng(0).random((3000, 3))
    kept = radius_downsample(points, 0.08, seed=1)
    nearest, _ = cKDTree(kept).query(kept, k=2)
    assert nearest[:, 1].min() > 0.08
    # every dropped point has a kept one within the radius (greedy thinning leaves no gap)
    to_kept, _ = cKDTree(kept).query(points)
    assert to_kept.max() <= 0.08
    assert np.array_equal(kept, radius_downsample(points, 0.08, seed=1))


def test_point_cloud_reference_and_spacing_sampling():
    reference = load_like(sphere_points(1.1, 40_000))
    predicted = load_like(sphere(1.0, subdivisions=4))
    report = compare_surfaces(predicted, reference, spacing=0.02, thresholds=(0.05, 0.15))
    assert report.chamfer == pytest.approx(0.1, abs=5e-3)
    assert report.normal_consistency is None
    assert report.fscore[0.05] == 0.0 and report.fscore[0.15] == 1.0


def load_like(geometry):
    """A `Surface` as `load_surface` returns it, without a file."""
    from pathlib import Path

    from neurecon_ns.mesh.evaluate import Surface

    if isinstance(geometry, trimesh.Trimesh):
        return Surface(Path("mesh.ply"), np.asarray(geometry.vertices), np.asarray(geometry.faces))
    return Surface(Path("points.ply"), np.asarray(geometry), None)


def test_bad_mesh_files_are_one_sentence(tmp_path):
    with pytest.raises(UserInputError, match="missing.ply: mesh file not found"):
        load_surface(tmp_path / "missing.ply")
    empty = tmp_path / "empty.ply"
    trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)).export(empty)
    with pytest.raises(UserInputError, match="empty.ply: the mesh is empty"):
        load_surface(empty)
    blank = tmp_path / "blank.ply"
    blank.write_text("")
    with pytest.raises(UserInputError, match="blank.ply: not a readable mesh"):
        load_surface(blank)
    broken = sphere(1.0, subdivisions=1)
    broken.vertices[3] = [np.nan, 0.0, 0.0]
    nan_path = tmp_path / "nan.ply"
    broken.export(nan_path)
    with pytest.raises(UserInputError, match="nan.ply: 1 of 42 vertices of the mesh are NaN"):
        load_surface(nan_path)


# -- DTU protocol ------------------------------------------------------------------------------------

SCAN = 1
BOX = np.array([[0.0, 0.0, 0.0], [40.0, 40.0, 40.0]])
RES = 2.0
PLANE = np.array([0.0, 0.0, 1.0, -5.0])  # above the table where z > 5


def write_dtu_files(root, reference_points, obs_mask=None, box=BOX, res=RES, plane=PLANE, drop_key=None):
    """The three evaluation files of scan 1, in the official layout and formats."""
    (root / "Points" / "stl").mkdir(parents=True, exist_ok=True)
    (root / "ObsMask").mkdir(parents=True, exist_ok=True)
    trimesh.PointCloud(reference_points).export(root / "Points" / "stl" / f"stl{SCAN:03}_total.ply")
    if obs_mask is None:
        obs_mask = np.ones((21, 21, 21), dtype=bool)
    content = {"ObsMask": obs_mask, "BB": box, "Res": np.array([[res]])}
    content.pop(drop_key, None)
    savemat(root / "ObsMask" / f"ObsMask{SCAN}_10.mat", content)
    savemat(root / "ObsMask" / f"Plane{SCAN}.mat", {"P": plane.reshape(4, 1)})
    return root


def fabricated_scan(root):
    """Reference: a 9x9 grid of points at z = 20 (above the table) and the same grid at z = 2 (the table).
    Observed voxels: x index below 15, i.e. x <= 28."""
    xy = np.stack(np.meshgrid(np.arange(4.0, 37.0, 4.0), np.arange(4.0, 37.0, 4.0), indexing="ij"), -1).reshape(-1, 2)
    top = np.concatenate([xy, np.full((81, 1), 20.0)], axis=1)
    table = np.concatenate([xy, np.full((81, 1), 2.0)], axis=1)
    obs_mask = np.zeros((21, 21, 21), dtype=bool)
    obs_mask[:15] = True
    write_dtu_files(root, np.concatenate([top, table]), obs_mask)
    return top, table


def test_dtu_filters_drop_exactly_what_they_should(tmp_path):
    top, table = fabricated_scan(tmp_path)
    partners = top + [0.0, 0.0, 0.5]  # 0.5 above each reference point of the object
    observed_outlier = [[10.0, 10.0, 40.5]]  # voxel (5, 5, 20) is observed, but 20.5 from the reference
    in_pad = [[-30.0, 10.0, 20.0], [140.0, 10.0, 20.0]]  # inside BB - 60 .. BB + 120 but outside the grid
    outside = [[-70.0, 10.0, 20.0], [170.0, 10.0, 20.0]]
    predicted = load_like(np.concatenate([partners, observed_outlier, in_pad, outside]))
    reference = load_dtu_reference(tmp_path, SCAN)

    report = evaluate_dtu(predicted, reference, thresholds=(1.0,))

    assert report.counts == {
        "mesh_samples": 86,
        "after_downsampling": 86,
        "in_padded_box": 81 + 1 + 2,
        "observed": 7 * 9 + 1,  # partners with x <= 28, and the outlier
        "reference_points": 162,
        "reference_above_plane": 81,
    }
    # accuracy: 63 partners at 0.5; the outlier is at or beyond 20 and left out of the mean
    assert report.accuracy == pytest.approx(0.5)
    # completeness: each object point's nearest in-box point is its partner; the table is left out
    assert report.completeness == pytest.approx(0.5)
    assert report.chamfer == pytest.approx(0.5)
    assert report.precision[1.0] == pytest.approx(63 / 64) and report.recall[1.0] == 1.0


def test_dtu_filter_steps_on_their_boundaries():
    assert in_padded_box(np.array([[-60.0, 0, 0], [-60.001, 0, 0], [159.999, 0, 0], [160.0, 0, 0]]), BOX, 60.0).tolist() == [True, False, True, False]
    assert above_plane(np.array([[0, 0, 5.001], [0, 0, 5.0], [0, 0, 4.0]]), PLANE).tolist() == [True, False, False]

    class Reference:
        obs_mask = np.zeros((21, 21, 21), dtype=bool)
        bbox, voxel_size = BOX, RES

    Reference.obs_mask[3, 4, 5] = True
    points = np.array([[6.9, 8.0, 10.0], [5.1, 8.9, 9.1], [7.1, 8.0, 10.0], [6.0, 8.0, -20.0], [80.0, 8.0, 10.0]])
    assert in_observed_voxels(points, Reference).tolist() == [True, True, False, False, False]


def test_dtu_chamfer_of_a_mesh_sphere_is_the_radius_difference(tmp_path):
    center = (20.0, 20.0, 20.0)
    write_dtu_files(tmp_path, sphere_points(11.0, 30_000, center))
    report = evaluate_dtu(sphere(10.0, center, subdivisions=4), load_dtu_reference(tmp_path, SCAN))
    assert report.chamfer == pytest.approx(1.0, abs=0.05)
    assert report.counts["after_downsampling"] < report.counts["mesh_samples"]


def test_dtu_mismatched_files_are_one_sentence(tmp_path):
    top, _ = fabricated_scan(tmp_path / "good")
    reference = load_dtu_reference(tmp_path / "good", SCAN)
    with pytest.raises(UserInputError, match=r"none of its 81 sampled points lies in the observed region of ObsMask1_10\.mat"):
        evaluate_dtu(load_like(top + 1000.0), reference)
    with pytest.raises(UserInputError, match=r"ObsMask1_10\.mat: holds no 'BB' \(it has ObsMask, Res\)"):
        load_dtu_reference(write_dtu_files(tmp_path / "no_bb", top, drop_key="BB"), SCAN)
    with pytest.raises(UserInputError, match="ObsMask has shape \\(21, 21\\), not a 3-D voxel grid"):
        load_dtu_reference(write_dtu_files(tmp_path / "flat", top, obs_mask=np.ones((21, 21), dtype=bool)), SCAN)
    with pytest.raises(UserInputError, match="Plane1.mat leaves none of the 81 points"):
        evaluate_dtu(load_like(top), load_dtu_reference(write_dtu_files(tmp_path / "high", top, plane=np.array([0.0, 0.0, 1.0, -100.0])), SCAN))
    (tmp_path / "good" / "ObsMask" / "Plane1.mat").unlink()
    with pytest.raises(UserInputError, match="Plane1.mat: DTU evaluation file not found"):
        load_dtu_reference(tmp_path / "good", SCAN)


def test_culling_by_the_scene_masks_removes_what_the_views_see_outside_them(small_scene):
    """The exact mesh of a synthetic scene (world units) plus a box beside it that the cameras see outside the
    object's masks: culling removes the box and keeps the object. The object is about 15 pixels wide in these
    48x40 views, so its silhouette, sampled at pixel centres, needs masks grown by a pixel or two."""
    obj = trimesh.load(small_scene.gt_mesh_path, force="mesh")
    clutter = trimesh.creation.box(extents=[5.0, 5.0, 5.0])
    clutter.apply_translation(small_scene.scale_mat[:3, 3] + [0.0, 0.0, -0.8 * small_scene.scale_mat[0, 0]])
    culled = cull_by_scene_masks(trimesh.util.concatenate([obj, clutter]), small_scene.output_dir, dilation_px=2.0)
    assert len(culled.faces) == len(obj.faces)
    assert np.allclose(np.sort(culled.vertices, axis=0), np.sort(obj.vertices, axis=0))
    # with the default dilation (24 pixels at 1600 wide: 0.7 here) the silhouette's rim goes too
    rimless = cull_by_scene_masks(obj, small_scene.output_dir)
    assert 0 < len(rimless.faces) < len(obj.faces)
