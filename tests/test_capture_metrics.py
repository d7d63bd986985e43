"""The real-scan benchmark's measures (`mesh/capture_metrics.py`) on meshes whose answer is known."""

import numpy as np
import pytest
import trimesh

from neurecon_ns.data.neus_dataparser import NeusDataParserConfig
from neurecon_ns.mesh.capture_metrics import mask_iou, seen_faces, silhouette_ious, surface_noise
from neurecon_ns.render.rasterize import PinholeCamera


def plane(size: float = 1.0, cells: int = 80, height=None) -> trimesh.Trimesh:
    """A square grid in the xy plane, z = height(x, y) (0 if None)."""
    axis = np.linspace(-size / 2, size / 2, cells + 1)
    x, y = np.meshgrid(axis, axis, indexing="ij")
    z = np.zeros_like(x) if height is None else height(x, y)
    vertices = np.stack([x, y, z], -1).reshape(-1, 3)
    index = np.arange((cells + 1) ** 2).reshape(cells + 1, cells + 1)
    corner = index[:-1, :-1].ravel()
    right, up, diagonal = index[1:, :-1].ravel(), index[:-1, 1:].ravel(), index[1:, 1:].ravel()
    faces = np.concatenate([np.stack([corner, right, diagonal], -1), np.stack([corner, diagonal, up], -1)])
    return trimesh.Trimesh(vertices, faces, process=False)


def scene_cameras_and_masks(scene):
    outputs = NeusDataParserConfig(data=scene.output_dir, eval_mode="all").setup().get_dataparser_outputs("train")
    cameras = [PinholeCamera.from_cameras(outputs.cameras, index) for index in range(len(outputs.cameras))]
    masks = [_read_mask(path) for path in outputs.metadata["fg_mask_filenames"]]
    return cameras, masks


def _read_mask(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 127


def test_mask_iou():
    a = np.zeros((4, 4), dtype=bool)
    b = np.zeros((4, 4), dtype=bool)
    a[:2], b[1:3] = True, True
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    assert mask_iou(a, a) == 1.0


def test_exact_mesh_matches_its_own_masks(small_scene):
    cameras, masks = scene_cameras_and_masks(small_scene)
    exact = trimesh.load(small_scene.gt_mesh_unit_path, force="mesh")
    ious = silhouette_ious(exact, cameras, masks)
    assert ious.min() > 0.95
    shrunk = exact.copy()
    shrunk.apply_scale(0.85)
    assert silhouette_ious(shrunk, cameras, masks).mean() < ious.mean() - 0.1


def test_surface_noise_of_flat_curved_and_wavy_surfaces():
    def noise(mesh):
        return surface_noise(mesh, max_vertices=3000)

    assert noise(plane()) < 1e-6
    # a sphere bends over the patch, but the fitted plane stays its tangent plane
    assert noise(trimesh.creation.icosphere(subdivisions=5, radius=0.5)) < 1.0
    # a cube: its sharp edges are a small share of the vertices
    cube = trimesh.creation.box((1.0, 1.0, 1.0))
    for _ in range(6):
        cube = cube.subdivide()
    assert noise(cube) < 1.0
    # ripples 6% of the size long and 0.3% high: a wavy wall
    wavy = plane(cells=160, height=lambda x, y: 0.003 * np.sin(2 * np.pi * x / 0.06) * np.sin(2 * np.pi * y / 0.06))
    assert noise(wavy) > 5.0
    rng = np.random.default_rng(0)
    noisy = plane()
    noisy.vertices[:, 2] += rng.normal(0.0, 0.002, len(noisy.vertices))
    assert noise(noisy) > 5.0


def test_seen_faces_leave_out_the_hidden_side():
    camera = PinholeCamera(camera_to_world=np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3.0], [0, 0, 0, 1]], dtype=float),
                           fx=100.0, fy=100.0, cx=32.0, cy=32.0, width=64, height=64)
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    seen = seen_faces(sphere, [camera])
    facing = sphere.triangles_center[:, 2] > 0.2  # nearer the limb (z = 0.5^2 / 3) the camera sees faces edge-on
    hidden = sphere.triangles_center[:, 2] < -0.1
    assert seen[facing].all()
    assert not seen[hidden].any()


def test_a_face_seen_only_edge_on_is_not_seen():
    """A box's +y face lies in a plane through the camera: its pixels are a line, which says nothing of where the
    face lies along its normal; the face turned to the camera is seen."""
    camera = PinholeCamera(camera_to_world=np.array([[1, 0, 0, 0], [0, 1, 0, 0.5], [0, 0, 1, 3.0], [0, 0, 0, 1]], dtype=float),
                           fx=100.0, fy=100.0, cx=32.0, cy=32.0, width=64, height=64)
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    seen = seen_faces(box, [camera])
    assert seen[box.face_normals[:, 2] > 0.99].all()
    edge_on = box.face_normals[:, 1] > 0.99
    assert not seen[edge_on].any()
    assert seen_faces(box, [camera], min_facing=-1.0)[edge_on].all()  # what a visibility test alone would keep


def load_real_scan():
    """benchmarks/real_scan.py as a module (benchmarks are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "real_scan.py"
    spec = importlib.util.spec_from_file_location("real_scan", path)
    real_scan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real_scan)
    return real_scan


def test_real_scan_script_row_and_missing_capture(tmp_path):
    from neurecon_ns.errors import UserInputError

    real_scan = load_real_scan()
    results = {"mean_iou": 0.98123, "min_iou": 0.95, "held_out_psnr_masked": 24.5, "surface_noise_deg": 3.21, "chamfer_pixels": 0.8}
    row = real_scan.table_row("before", "neus-fast", 2400, 840.0, results)
    assert row == "| before | neus-fast | 2400 | 840 | 0.35 | 0.9812 | 0.9500 | 24.50 | 3.21 | 0.80 |"
    assert row.count("|") == real_scan.TABLE_HEADER.splitlines()[0].count("|")
    exact = real_scan.table_row("exact", "-", 0, float("nan"), {**results, "held_out_psnr_masked": float("nan")})
    assert "| - | - | 0.9812" in exact
    with pytest.raises(UserInputError, match="capture not found"):
        real_scan.resolve_data(tmp_path / "missing")
    (tmp_path / "scene.json").write_text('{"shape": "sphere"}')
    with pytest.raises(UserInputError, match=r"scene\.json: --filled-recesses needs the building .*neurecon synth --preset dtu"):
        real_scan.filled_recesses_surface(tmp_path)


def test_real_scan_parts_add_up_to_the_chamfer():
    """The building's Chamfer split by part: the parts' shares add up to the whole, and a part's offsets are those
    of the mesh points nearest it."""
    real_scan = load_real_scan()
    rng = np.random.default_rng(0)
    names = np.array(["roof, front slope", "front wall", "gable wall"], dtype=object)
    mesh_parts, reference_parts = names[rng.integers(0, 3, 900)], names[rng.integers(0, 3, 1100)]
    to_reference, to_mesh = rng.exponential(1.0, 900), rng.exponential(1.5, 1100)
    offsets = np.where(mesh_parts == "gable wall", -3.0, 0.5)
    parts = real_scan.parts_breakdown(mesh_parts, reference_parts, to_reference, to_mesh, offsets)
    assert list(parts) == ["roof, front slope", "front wall", "gable wall"]  # the order of BUILDING_PARTS
    chamfer = (to_reference.mean() + to_mesh.mean()) / 2
    assert sum(part["chamfer_share_pixels"] for part in parts.values()) == pytest.approx(chamfer)
    assert sum(part["area_share"] for part in parts.values()) == pytest.approx(1.0)
    assert parts["gable wall"]["offset_median_pixels"] == -3.0 and parts["front wall"]["offset_p10_pixels"] == 0.5
    assert parts["front wall"]["completeness_pixels"] == pytest.approx(to_mesh[reference_parts == "front wall"].mean())
    table = real_scan.parts_table(parts)
    assert "| gable wall |" in table and "-3.00 / -3.00 / -3.00" in table


def test_signed_offsets_say_which_side_of_the_surface_and_how_far():
    from neurecon_ns.mesh.capture_metrics import signed_offsets

    sphere = trimesh.creation.icosphere(subdivisions=5, radius=1.0)
    directions = np.random.default_rng(0).normal(size=(500, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    for radius in (1.03, 0.96):
        offsets = signed_offsets(directions * radius, sphere, num_reference_points=100_000)
        # the icosphere's faces lie up to 1.2e-3 inside the unit sphere
        assert np.abs(offsets - (radius - 1.0)).max() < 4e-3, (radius, offsets.min(), offsets.max())
