"""Coarse-to-fine marching cubes against the dense reference and analytic surfaces; mesh post-processing."""

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from neurecon_ns.errors import UserInputError
from neurecon_ns.fields.sdf_field import GeometryNetworkConfig
from neurecon_ns.mesh.extract import (
    coarse_levels,
    default_coarse_factor,
    extract_level_set,
    extract_level_set_dense,
    extraction_stats,
    mark_cells,
)
from neurecon_ns.mesh.postprocess import (
    cull_by_cameras,
    dilate_mask,
    export_mesh,
    keep_largest_component,
    transform_mesh,
)


def sphere_sdf(center=(0.0, 0.0, 0.0), radius=0.5):
    center = torch.tensor(center)
    return lambda x: (x - center).norm(dim=-1) - radius


def torus_sdf(x, major=0.5, minor=0.12):
    ring = torch.stack([torch.linalg.norm(x[:, :2], dim=-1) - major, x[:, 2]], dim=-1)
    return ring.norm(dim=-1) - minor


def bumpy_sphere(x):
    """Not a distance: a sphere with bumps of 5% of its radius (many small features, saddles, ambiguous cubes)."""
    bumps = torch.sin(9 * x[:, 0]) * torch.sin(11 * x[:, 1]) * torch.sin(7 * x[:, 2])
    return x.norm(dim=-1) - 0.5 - 0.05 * bumps


def network_field():
    """A geometry network as the models build it (SAL initialisation), with perturbed weights so its zero set is
    no sphere: the kind of field `neurecon mesh` meets."""
    torch.manual_seed(0)
    network = GeometryNetworkConfig(hidden_dim=32, num_layers=3, skip_layers=(2,), num_frequencies=2, feature_dim=8).setup()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return lambda x: network(x)[:, 0]


def assert_same_mesh(coarse_to_fine: trimesh.Trimesh, dense: trimesh.Trimesh, voxel: float) -> None:
    """Same vertices up to float rounding and the same faces, vertex for vertex."""
    assert len(coarse_to_fine.vertices) == len(dense.vertices)
    distance, match = cKDTree(dense.vertices).query(coarse_to_fine.vertices)
    assert distance.max() < 1e-4 * voxel
    assert len(np.unique(match)) == len(match)
    faces_a = {tuple(face) for face in np.sort(match[coarse_to_fine.faces], axis=1)}
    faces_b = {tuple(face) for face in np.sort(np.asarray(dense.faces), axis=1)}
    assert faces_a == faces_b


CASES = {
    # name: (level function, box min, box max, resolution, coarse-to-fine settings)
    "sphere, 27 blocks": (sphere_sdf(), [-1] * 3, [1] * 3, 48, dict(block_resolution=16)),
    "sphere on grid samples": (sphere_sdf(), [-1] * 3, [1] * 3, 33, dict(block_resolution=8)),
    "off-centre sphere, odd box": (sphere_sdf((0.3, -0.2, 0.1), 0.45), [-0.4, -0.9, -0.6], [1.0, 0.5, 0.9], 61, dict(block_resolution=12)),
    "torus, coarse factor 3": (torus_sdf, [-1] * 3, [1] * 3, 70, dict(coarse_factor=3, block_resolution=9)),
    "bumpy, 3 coarse levels": (bumpy_sphere, [-1] * 3, [1] * 3, 97, dict(coarse_factor=2, block_resolution=16, coarsest_cells=8)),
    "network field": (network_field(), [-1] * 3, [1] * 3, 44, dict(block_resolution=24)),
    "network field, Lipschitz marks": (network_field(), [-1] * 3, [1] * 3, 33, dict(block_resolution=16, sdf_lipschitz=1.0)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_coarse_to_fine_equals_dense(name):
    level_fn, box_min, box_max, resolution, settings = CASES[name]
    mesh = extract_level_set(level_fn, box_min, box_max, resolution, progress=False, **settings)
    dense = extract_level_set_dense(level_fn, box_min, box_max, resolution)
    voxel = float(np.min((np.asarray(box_max) - np.asarray(box_min)) / (resolution - 1)))
    assert_same_mesh(mesh, dense, voxel)
    stats = extraction_stats(mesh)
    assert stats.blocks_total > 1
    assert stats.num_queries < stats.num_dense_queries


def test_several_coarse_levels_are_used():
    assert coarse_levels(97, 2, coarsest_cells=8) == [(2, 48), (4, 24), (8, 12)]
    assert coarse_levels(512, 4) == [(4, 128), (8, 64)]
    assert coarse_levels(2048, default_coarse_factor(2048)) == [(8, 256), (16, 128), (32, 64)]
    assert default_coarse_factor(256) == 4 and default_coarse_factor(1025) == 4 and default_coarse_factor(1100) == 8


@pytest.mark.parametrize("resolution", [40, 64, 97])
def test_sphere_radius_is_recovered_within_a_voxel(resolution):
    radius = 0.6
    mesh = extract_level_set(sphere_sdf(radius=radius), [-1] * 3, [1] * 3, resolution, progress=False)
    voxel = 2.0 / (resolution - 1)
    distances = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(distances - radius).max() < voxel
    points = np.asarray(mesh.sample(20_000))
    assert abs(np.linalg.norm(points, axis=1).mean() - radius) < voxel / 4
    assert mesh.is_watertight
    assert mesh.volume > 0  # faces point outwards, towards increasing values
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.03)


def test_blocks_join_without_seams():
    mesh = extract_level_set(torus_sdf, [-1] * 3, [1] * 3, 81, block_resolution=8, progress=False)
    assert extraction_stats(mesh).blocks_visited > 20
    assert mesh.is_watertight
    assert mesh.euler_number == 0  # one torus, no cracks, no pinches


def test_queries_grow_with_area_not_volume():
    queries = {}
    for resolution in (129, 257):
        mesh = extract_level_set(sphere_sdf(), [-1] * 3, [1] * 3, resolution, progress=False)
        queries[resolution] = extraction_stats(mesh).num_queries
    # doubling the resolution quadruples the surface in voxels and multiplies the volume by 8
    assert queries[257] / queries[129] < 5.0
    assert queries[257] * 10 < 257**3


def test_field_without_crossing_names_its_range():
    with pytest.raises(UserInputError, match=r"never crosses level 0 inside the box \(min 1\.\d+, max 2\.\d+"):
        extract_level_set(lambda x: x.norm(dim=-1) + 1.0, [-1] * 3, [1] * 3, 32, progress=False)
    with pytest.raises(UserInputError, match="never crosses"):
        extract_level_set_dense(lambda x: -x.norm(dim=-1) - 1.0, [-1] * 3, [1] * 3, 16)


def test_diverged_field_and_bad_box_are_user_errors():
    with pytest.raises(UserInputError, match="NaN or infinite"):
        extract_level_set(lambda x: x[:, 0] * float("nan"), [-1] * 3, [1] * 3, 32, progress=False)
    with pytest.raises(UserInputError, match="box is empty"):
        extract_level_set(sphere_sdf(), [0, 0, 0], [1, -1, 1], 32, progress=False)
    with pytest.raises(UserInputError, match="at least 2"):
        extract_level_set(sphere_sdf(), [-1] * 3, [1] * 3, 1, progress=False)


def test_mark_cells_marks_crossings_and_dilates():
    values = np.ones((6, 6, 6), dtype=np.float32)
    values[2, 2, 2] = -1.0  # the 8 cells around this sample straddle 0
    assert mark_cells(values, 0.0, dilation=0).sum() == 8
    assert mark_cells(values, 0.0, dilation=1).sum() == 4**3
    # an exact SDF 0.3 away from the level marks cells whose half diagonal exceeds 0.3
    far = np.full((3, 3, 3), 0.3, dtype=np.float32)
    assert not mark_cells(far, 0.0, 0, sdf_lipschitz=1.0, cell_size=np.full(3, 0.2)).any()
    assert mark_cells(far, 0.0, 0, sdf_lipschitz=1.0, cell_size=np.full(3, 0.4)).all()


# -- post-processing ----------------------------------------------------------------------------


def test_keep_largest_component():
    big = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    small = trimesh.creation.icosphere(subdivisions=1, radius=0.2)
    small.apply_translation([3, 0, 0])
    largest = keep_largest_component(trimesh.util.concatenate([small, big]))
    assert len(largest.faces) == len(big.faces)
    assert np.allclose(np.sort(largest.vertices, axis=0), np.sort(big.vertices, axis=0))


def test_cull_by_cameras_keeps_what_is_seen_inside_the_masks():
    # a plane of 2x2 at z = 0 seen from z = -4: the camera sees x, y in [-1, 1] on 100x100 pixels
    plane = trimesh.creation.box(extents=[4.0, 4.0, 0.01])
    plane = trimesh.Trimesh(*trimesh.remesh.subdivide_to_size(plane.vertices, plane.faces, 0.1))
    intrinsics = np.array([[200.0, 0.0, 50.0], [0.0, 200.0, 50.0], [0.0, 0.0, 1.0]])
    c2w = np.eye(4)[None]  # OpenCV axes: looking along +z, x to the right of the image
    c2w[0, 2, 3] = -4.0
    seen = cull_by_cameras(plane, intrinsics[None], c2w, (100, 100))
    assert len(seen.faces) > 0
    assert np.abs(seen.vertices[:, :2]).max() <= 1.0 + 1e-9
    # a mask of the image's left half keeps the faces at x < 0 only
    mask = np.zeros((100, 100), dtype=bool)
    mask[:, :50] = True
    left = cull_by_cameras(plane, intrinsics[None], c2w, (100, 100), masks=[mask])
    assert left.vertices[:, 0].max() <= 1e-9 and len(left.faces) < len(seen.faces)
    # growing the mask by 12 pixels lets x < 12 / 200 * 4 = 0.24 through (vertices are about 0.1 apart)
    grown = cull_by_cameras(plane, intrinsics[None], c2w, (100, 100), masks=[mask], dilation_px=12)
    assert 0.24 - 0.13 < grown.vertices[:, 0].max() < 0.24
    # with min_views=0 what no camera sees stays (the DTU rule), only what a mask rejects goes
    unseen_kept = cull_by_cameras(plane, intrinsics[None], c2w, (100, 100), masks=[mask], min_views=0)
    assert unseen_kept.vertices[:, 0].max() > 1.9
    with pytest.raises(UserInputError, match="mask 0 is 10x10 but its image is 100x100"):
        cull_by_cameras(plane, intrinsics[None], c2w, (100, 100), masks=[np.ones((10, 10))])


def test_dilate_mask_is_a_disk():
    mask = np.zeros((21, 21), dtype=bool)
    mask[10, 10] = True
    grown = dilate_mask(mask, 3.0)
    assert grown.sum() == sum(1 for i in range(-3, 4) for j in range(-3, 4) if i * i + j * j <= 9)


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".glb"])
def test_export_formats_round_trip(tmp_path, suffix):
    mesh = trimesh.creation.icosphere(subdivisions=2)
    path = export_mesh(mesh, tmp_path / "nested" / f"mesh{suffix}")
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.faces) == len(mesh.faces)
    assert np.allclose(np.sort(loaded.vertices, axis=0), np.sort(mesh.vertices, axis=0), atol=1e-5)


def test_export_rejects_unknown_suffix(tmp_path):
    with pytest.raises(UserInputError, match=r"mesh\.xyz: unknown mesh format '\.xyz'"):
        export_mesh(trimesh.creation.icosphere(), tmp_path / "mesh.xyz")


def test_transform_mesh_keeps_normals_outward_under_a_mirror():
    mesh = trimesh.creation.icosphere(subdivisions=2)
    mirrored = transform_mesh(mesh, np.diag([-2.0, 2.0, 2.0, 1.0]))
    assert mirrored.volume == pytest.approx(8 * mesh.volume)
