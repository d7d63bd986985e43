"""Synthetic scenes: exact SDFs, and images, masks, cameras and meshes that agree with each other."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from scipy.ndimage import binary_dilation

from neurecon_ns.data import shapes, synthetic
from neurecon_ns.errors import UserInputError

WIDTH, HEIGHT, NUM_VIEWS = 80, 60, 10


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A small non-square scene in every layout, with the environment background."""
    output_dir = tmp_path_factory.mktemp("synth") / "scene"
    return synthetic.write_scene(
        output_dir,
        num_views=NUM_VIEWS,
        width=WIDTH,
        height=HEIGHT,
        background="environment",
        formats=("neus", "nerfstudio", "blender"),
        mesh_resolution=128,
        holdout_every=4,
    )


def _load_cameras(scene):
    cameras = np.load(scene.cameras_path)
    world_mats = np.stack([cameras[f"world_mat_{i}"] for i in range(scene.num_views)])
    scale_mat = cameras["scale_mat_0"]
    return world_mats, scale_mat


def _rays_from_world_mat(world_mat, width, height):
    """World-unit rays through pixel centres using only P = world_mat[:3, :4] = K [R | t]."""
    projection = world_mat[:3, :4]
    inverse_kr = np.linalg.inv(projection[:, :3])
    centre = -inverse_kr @ projection[:, 3]
    rows, columns = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    pixels = np.stack([columns, rows, np.ones_like(rows)], -1).reshape(-1, 3)
    directions = pixels @ inverse_kr.T
    return np.broadcast_to(centre, directions.shape), directions / np.linalg.norm(directions, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


def test_sphere_sdf_is_exact():
    sphere = shapes.sphere(0.6)
    directions = np.random.default_rng(0).normal(size=(50, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    for radius in (0.0, 0.3, 0.6, 1.7):
        np.testing.assert_allclose(sphere.sdf(radius * directions), radius - 0.6, atol=1e-12)


def test_torus_sdf_is_exact():
    torus = shapes.torus(major_radius=0.45, minor_radius=0.17)
    points = np.array([[0.45, 0.0, 0.0], [0.0, -0.8, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.45, 0.17]])
    expected = np.array([-0.17, 0.35 - 0.17, 0.45 - 0.17, np.hypot(0.45, 1.0) - 0.17, 0.0])
    np.testing.assert_allclose(torus.sdf(points), expected, atol=1e-12)


@pytest.mark.parametrize("name", sorted(shapes.SHAPES))
def test_sdf_is_lipschitz_and_matches_torch(name):
    shape = shapes.get_shape(name)
    rng = np.random.default_rng(1)
    points_a = rng.uniform(-1.0, 1.0, size=(20000, 3))
    points_b = points_a + rng.normal(scale=0.05, size=points_a.shape)
    difference = np.abs(shape.sdf(points_a) - shape.sdf(points_b))
    assert np.all(difference <= np.linalg.norm(points_a - points_b, axis=-1) * (1 + 1e-9) + 1e-12)
    np.testing.assert_allclose(shape.sdf(torch.from_numpy(points_a)).numpy(), shape.sdf(points_a), atol=1e-12)


@pytest.mark.parametrize("name", sorted(shapes.SHAPES))
def test_surface_mesh_lies_on_the_zero_set(name):
    shape = shapes.get_shape(name)
    mesh = shapes.surface_mesh(shape, resolution=64)
    assert mesh.is_watertight
    assert mesh.volume > 0.0, "faces must be wound with outward normals"
    np.testing.assert_allclose(shape.sdf(mesh.vertices), 0.0, atol=1e-9)
    assert np.linalg.norm(mesh.vertices, axis=-1).max() <= shape.bounding_radius + 1e-9


def test_default_shape_is_not_a_sphere():
    shape = shapes.get_shape(shapes.DEFAULT_SHAPE)
    radii = np.linalg.norm(shapes.surface_mesh(shape, resolution=64).vertices, axis=-1)
    assert radii.max() < 0.75 and radii.max() > 0.5
    assert radii.max() - radii.min() > 0.3
    assert shape.sdf(np.zeros(3)) > 0.0, "the torus hole leaves the centre outside"


def test_scaled_sphere_is_a_bigger_sphere():
    bigger = shapes.scaled(shapes.sphere(0.6), 1.1)
    points = np.random.default_rng(2).normal(size=(100, 3))
    np.testing.assert_allclose(bigger.sdf(points), np.linalg.norm(points, axis=-1) - 0.66, atol=1e-12)
    assert bigger.bounding_radius == pytest.approx(0.66)


def test_unknown_shape_lists_the_valid_names():
    with pytest.raises(UserInputError, match="composite.*sphere.*torus"):
        shapes.get_shape("cube")


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


def test_layout_and_scene_description(scene):
    out = scene.output_dir
    assert len(scene.image_paths) == NUM_VIEWS and scene.image_paths[0].name == "000000.png"
    assert len(scene.mask_paths) == NUM_VIEWS and scene.mask_paths[0].name == "000.png"
    assert np.asarray(Image.open(scene.image_paths[0])).shape == (HEIGHT, WIDTH, 3)
    mask = np.asarray(Image.open(scene.mask_paths[0]))
    assert mask.shape == (HEIGHT, WIDTH, 3) and set(np.unique(mask)) <= {0, 255}
    assert np.asarray(Image.open(out / "masks" / "000000.png")).shape == (HEIGHT, WIDTH)
    cameras = np.load(scene.cameras_path)
    for key in ("world_mat", "world_mat_inv", "scale_mat", "scale_mat_inv", "camera_mat", "camera_mat_inv"):
        assert cameras[f"{key}_{NUM_VIEWS - 1}"].shape == (4, 4)
    description = json.loads(scene.scene_json_path.read_text())
    assert description["shape"] == shapes.DEFAULT_SHAPE
    assert (description["width"], description["height"], description["num_views"]) == (WIDTH, HEIGHT, NUM_VIEWS)
    np.testing.assert_array_equal(np.array(description["scale_mat"]), cameras["scale_mat_0"])
    assert not np.allclose(cameras["scale_mat_0"], np.eye(4)), "world units must differ from the unit sphere"


def test_mesh_projects_inside_masks(scene):
    world_mats, _ = _load_cameras(scene)
    vertices_world = trimesh.load(scene.gt_mesh_path, process=False).vertices
    homogeneous = np.concatenate([vertices_world, np.ones((len(vertices_world), 1))], -1)
    for index, world_mat in enumerate(world_mats):
        mask = np.asarray(Image.open(scene.mask_paths[index]))[..., 0] > 127
        projected = homogeneous @ world_mat[:3].T
        assert np.all(projected[:, 2] > 0.0)
        columns = np.floor(projected[:, 0] / projected[:, 2]).astype(int)
        rows = np.floor(projected[:, 1] / projected[:, 2]).astype(int)
        assert columns.min() >= 0 and rows.min() >= 0 and columns.max() < WIDTH and rows.max() < HEIGHT
        assert binary_dilation(mask, np.ones((3, 3), bool))[rows, columns].all()
        # and the silhouette is covered: every foreground pixel has a vertex within one pixel
        covered = np.zeros_like(mask)
        covered[rows, columns] = True
        assert (mask & ~binary_dilation(covered, np.ones((3, 3), bool))).sum() == 0


def test_foreground_rays_reach_the_surface(scene):
    """Rays rebuilt from world_mat and scale_mat alone hit the analytic surface exactly on the mask."""
    world_mats, scale_mat = _load_cameras(scene)
    shape = shapes.get_shape(scene.shape_name)
    for index in (0, NUM_VIEWS // 2, NUM_VIEWS - 1):
        origins_world, directions = _rays_from_world_mat(world_mats[index], WIDTH, HEIGHT)
        origins_unit = (origins_world - scale_mat[:3, 3]) / scale_mat[0, 0]
        # plain sphere tracing from the camera, many steps, no shortcuts
        t = np.zeros(len(directions))
        marching = np.arange(len(directions))
        for _ in range(5000):
            step = shape.sdf(origins_unit[marching] + t[marching, None] * directions[marching])
            t[marching] += np.maximum(step, 0.0)
            marching = marching[(step > 1e-9) & (t[marching] < 10.0)]
        distance = shape.sdf(origins_unit + t[:, None] * directions)
        mask = np.asarray(Image.open(scene.mask_paths[index]))[..., 0].reshape(-1) > 127
        assert np.all(distance[mask] < 1e-4)
        reaches = distance < 1e-4
        assert np.count_nonzero(reaches != mask) <= 2, "masks may differ only on rays grazing the surface"


def test_gt_meshes_agree_through_scale_mat(scene):
    mesh_world = trimesh.load(scene.gt_mesh_path, process=False)
    mesh_unit = trimesh.load(scene.gt_mesh_unit_path, process=False)
    _, scale_mat = _load_cameras(scene)
    mapped = mesh_unit.vertices @ scale_mat[:3, :3].T + scale_mat[:3, 3]
    np.testing.assert_allclose(mapped, mesh_world.vertices, atol=1e-4 * scale_mat[0, 0])
    np.testing.assert_array_equal(mesh_unit.faces, mesh_world.faces)
    shape = shapes.get_shape(scene.shape_name)
    np.testing.assert_allclose(shape.sdf(mesh_unit.vertices.astype(np.float64)), 0.0, atol=1e-6)


def test_transforms_json_is_the_opengl_inverse_of_world_mat(scene):
    world_mats, _ = _load_cameras(scene)
    transforms = json.loads(scene.transforms_path.read_text())
    intrinsics = np.array(
        [[transforms["fl_x"], 0, transforms["cx"]], [0, transforms["fl_y"], transforms["cy"]], [0, 0, 1]]
    )
    assert (transforms["w"], transforms["h"], transforms["camera_model"]) == (WIDTH, HEIGHT, "OPENCV")
    for index, frame in enumerate(transforms["frames"]):
        assert (scene.output_dir / frame["file_path"]).resolve() == scene.image_paths[index].resolve()
        assert (scene.output_dir / frame["mask_path"]).exists()
        w2c_opencv = np.linalg.inv(intrinsics) @ world_mats[index][:3]
        c2w_opencv = np.linalg.inv(np.concatenate([w2c_opencv, [[0, 0, 0, 1]]]))
        expected = c2w_opencv @ np.diag([1.0, -1.0, -1.0, 1.0])
        np.testing.assert_allclose(np.array(frame["transform_matrix"]), expected, atol=1e-8)


def test_dtu_recipe_recovers_the_unit_sphere_pose(scene):
    """The README recipe: decompose world_mat @ scale_mat; the cameras look at the unit-sphere origin."""
    cv2 = pytest.importorskip("cv2")
    world_mats, scale_mat = _load_cameras(scene)
    for world_mat in world_mats:
        intrinsics, rotation, centre, *_ = cv2.decomposeProjectionMatrix((world_mat @ scale_mat)[:3, :4])
        intrinsics = intrinsics / intrinsics[2, 2]
        np.testing.assert_allclose(intrinsics, scene.intrinsics, atol=1e-6)
        centre_unit = centre[:3, 0] / centre[3, 0]
        assert 2.5 - 1e-9 <= np.linalg.norm(centre_unit) <= 3.0 + 1e-9
        forward = rotation[2]
        assert forward @ (-centre_unit) / np.linalg.norm(centre_unit) > 0.999


def test_rays_match_nerfstudio_cameras(scene):
    """nerfstudio's Cameras.generate_rays from transforms.json gives our pixel-centre rays."""
    from nerfstudio.cameras.cameras import Cameras

    transforms = json.loads(scene.transforms_path.read_text())
    c2w_opengl = torch.tensor([frame["transform_matrix"] for frame in transforms["frames"]], dtype=torch.float64)
    cameras = Cameras(
        camera_to_worlds=c2w_opengl[:, :3],
        fx=transforms["fl_x"],
        fy=transforms["fl_y"],
        cx=transforms["cx"],
        cy=transforms["cy"],
        width=WIDTH,
        height=HEIGHT,
    )
    world_mats, _ = _load_cameras(scene)
    for index in (0, NUM_VIEWS - 1):
        bundle = cameras.generate_rays(camera_indices=index)
        _, directions = _rays_from_world_mat(world_mats[index], WIDTH, HEIGHT)
        np.testing.assert_allclose(bundle.directions.reshape(-1, 3).double().numpy(), directions, atol=1e-5)


def test_blender_layout(scene):
    blender = scene.blender_dir
    splits = {
        split: json.loads((blender / f"transforms_{split}.json").read_text()) for split in ("train", "val", "test")
    }
    assert sum(len(meta["frames"]) for meta in splits.values()) == NUM_VIEWS
    assert all(meta["frames"] for meta in splits.values())
    frame = splits["train"]["frames"][0]
    assert frame["file_path"] == "./train/r_0"
    rgba = np.asarray(Image.open(blender / "train" / "r_0.png"))
    assert rgba.shape == (HEIGHT, WIDTH, 4)
    mask = np.asarray(Image.open(scene.mask_paths[frame["view_index"]]))[..., 0]
    np.testing.assert_array_equal(rgba[..., 3], mask)
    focal = 0.5 * WIDTH / np.tan(0.5 * splits["train"]["camera_angle_x"])
    assert focal == pytest.approx(scene.intrinsics[0, 0])
    # Blender space = 1.5 x unit-sphere space: cameras 3.75 to 4.5 from the origin
    position = np.array(frame["transform_matrix"])[:3, 3]
    assert 3.75 - 1e-9 <= np.linalg.norm(position) <= 4.5 + 1e-9


def test_images_are_textured(scene):
    for image_path, mask_path in zip(scene.image_paths, scene.mask_paths):
        image = np.asarray(Image.open(image_path)).astype(float)
        mask = np.asarray(Image.open(mask_path))[..., 0] > 127
        assert 0.02 < mask.mean() < 0.6
        assert image[mask].std(0).min() > 10.0, "foreground must be textured"
        assert image[~mask].std(0).min() > 5.0, "environment background varies with direction"


def test_environment_depends_on_direction_only(scene):
    world_mats, _ = _load_cameras(scene)
    origins, directions = _rays_from_world_mat(world_mats[0], WIDTH, HEIGHT)
    mask = np.asarray(Image.open(scene.mask_paths[0]))[..., 0].reshape(-1) > 127
    image = np.asarray(Image.open(scene.image_paths[0])).reshape(-1, 3).astype(float)
    expected = np.round(synthetic.environment(directions[~mask]) * 255.0)
    np.testing.assert_allclose(image[~mask], expected, atol=1.0)


def test_cameras_are_deterministic_in_the_seed():
    np.testing.assert_array_equal(synthetic.camera_poses_unit(12, seed=3), synthetic.camera_poses_unit(12, seed=3))
    assert not np.allclose(synthetic.camera_poses_unit(12, seed=3), synthetic.camera_poses_unit(12, seed=4))
    heights = synthetic.camera_poses_unit(40, seed=0)[:, 2, 3]
    assert (heights > 0).mean() > 0.7, "cameras mostly in the upper hemisphere"


@pytest.mark.parametrize("background, value", [("black", 0), ("white", 255)])
def test_plain_backgrounds(tmp_path, background, value):
    info = synthetic.write_scene(
        tmp_path / "scene", shape="sphere", num_views=2, width=32, height=32, background=background, mesh_resolution=32
    )
    image = np.asarray(Image.open(info.image_paths[0]))
    mask = np.asarray(Image.open(info.mask_paths[0]))[..., 0] > 127
    assert np.all(image[~mask] == value)


def test_refuses_a_non_empty_directory_unless_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    kwargs = dict(shape="torus", num_views=2, width=24, height=24, mesh_resolution=32)
    with pytest.raises(UserInputError, match="--overwrite"):
        synthetic.write_scene(tmp_path, **kwargs)
    info = synthetic.write_scene(tmp_path, overwrite=True, **kwargs)
    assert info.shape_name == "torus" and (tmp_path / "notes.txt").exists()
    with pytest.raises(UserInputError, match="black, white, environment"):
        synthetic.write_scene(tmp_path / "other", background="red")


# ---------------------------------------------------------------------------------------------
# The DTU-scale building
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "point, distance",
    [
        ((0.12, -0.40, -0.30), 0.10),  # in front of the -y wall, between two windows
        ((-0.20, 0.33, -0.46), 0.05),  # off the bottom edge of the +y wall: sqrt(0.03^2 + 0.04^2)
        ((0.0, 0.0, 0.44), 0.10),  # above the ridge
        ((-0.25, -0.27, -0.12), 0.015),  # inside a window recess, 0.015 in front of its back
        ((-0.22, 0.12, 0.45), 0.05),  # above the chimney
        ((-0.22, 0.12, 0.35), -0.025),  # inside the chimney, 0.05 wide
        ((0.48, 0.0, 0.45), 0.05),  # above the top step of the stepped gable
        ((0.53, 0.25, 0.17), 0.03),  # beside the stepped gable wall, below a step that rises above the roof
    ],
)
def test_building_sdf_is_exact_at_known_points(point, distance):
    building = shapes.get_shape("building")
    assert float(building.sdf(np.array(point))) == pytest.approx(distance, abs=1e-9)
    assert float(building.sdf(torch.tensor(point, dtype=torch.float64))) == pytest.approx(distance, abs=1e-9)


@pytest.mark.parametrize(
    "point, part",
    [
        ((0.0, -0.15, 0.19), "roof, front slope"),
        ((0.2, 0.15, 0.19), "roof, back slope"),
        ((0.12, -0.30, -0.30), "front wall"),  # between and below the windows
        ((-0.25, -0.255, -0.12), "windows"),  # the back of a window recess
        ((0.18, -0.30, -0.12), "windows"),  # the wall within 0.01 of a window's edge
        ((0.10, 0.255, -0.26), "door"),
        ((0.0, 0.30, -0.10), "back wall"),
        ((-0.46, 0.0, -0.20), "left end wall"),
        ((0.50, 0.0, -0.20), "gable wall"),
        ((0.48, 0.0, 0.40), "gable steps and sides"),
        ((-0.22, 0.12, 0.40), "chimney"),
        ((0.0, 0.0, -0.42), "base"),
    ],
)
def test_building_parts_name_each_face(point, part):
    assert float(shapes.get_shape("building").sdf(np.array(point))) == pytest.approx(0.0, abs=1e-9)
    assert shapes.building_part(np.array([point]))[0] == part
    assert part in shapes.BUILDING_PARTS


def test_building_without_recesses_has_flat_walls_across_the_windows():
    window_back, window_opening = (-0.25, -0.27, -0.12), (-0.25, -0.30, -0.12)
    filled = shapes.building(recesses=())
    assert float(filled.sdf(np.array(window_back))) == pytest.approx(-0.03, abs=1e-9)  # inside the wall now
    assert float(filled.sdf(np.array(window_opening))) == pytest.approx(0.0, abs=1e-9)
    assert float(shapes.get_shape("building").sdf(np.array(window_opening))) == pytest.approx(0.045, abs=1e-9)
    between_windows = (0.12, -0.40, -0.30)
    assert float(filled.sdf(np.array(between_windows))) == float(shapes.get_shape("building").sdf(np.array(between_windows)))


def test_polygon_sdf_of_a_square():
    square = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))
    points = np.array([[0.0, 0.0], [0.5, 0.0], [3.0, 0.0], [2.0, 2.0], [-1.0, 0.3]])
    np.testing.assert_allclose(shapes.polygon_sdf(points, square), [-1.0, -0.5, 2.0, np.sqrt(2.0), 0.0], atol=1e-12)


def test_building_albedo_has_fine_detail():
    """Neighbouring points a pixel apart (at DTU scale) on a wall differ: mortar joints and bricks."""
    x = np.linspace(-0.4, 0.4, 400)
    wall = np.stack([x, np.full_like(x, -0.30), np.full_like(x, -0.35)], -1)
    colours = shapes.building_albedo(wall)
    assert colours.min() >= 0.0 and colours.max() <= 1.0
    assert np.abs(np.diff(colours, axis=0)).max() > 0.2
    np.testing.assert_allclose(shapes.building_albedo(torch.from_numpy(wall)).numpy(), colours, atol=1e-9)


def test_dtu_layout_matches_the_dtu_numbers():
    poses = synthetic.dtu_camera_poses_unit()
    assert len(poses) == synthetic.DTU_NUM_VIEWS == 49
    distances = np.linalg.norm(poses[:, :3, 3], axis=-1)
    assert distances.min() >= 3.95 and distances.max() <= 4.17
    directions = poses[:, :3, 3] / distances[:, None]
    axis = directions.mean(axis=0) / np.linalg.norm(directions.mean(axis=0))
    angles = np.degrees(np.arccos(np.clip(directions @ axis, -1.0, 1.0)))
    assert 50.0 < angles.max() <= 56.0
    to_origin = -directions
    assert np.degrees(np.arccos(np.einsum("ij,ij->i", poses[:, :3, 2], to_origin))).max() < 3.0
    intrinsics = synthetic.dtu_intrinsics_matrix(400, 300)
    np.testing.assert_allclose(intrinsics[[0, 1, 0, 1], [0, 1, 2, 2]], [723.08, 723.08, 200.0, 150.0])


def test_dtu_layout_matches_the_shared_scan(shared_dtu_scan):
    from neurecon_ns.data.neus_dataparser import NeusDataParser

    intrinsics, c2w, scale_mat = NeusDataParser._read_cameras(shared_dtu_scan / "cameras_sphere.npz", 49)
    distances = np.linalg.norm(c2w[:, :3, 3], axis=-1)
    low, high = synthetic.DTU_DISTANCE_RANGE
    assert abs(distances.min() - low) < 0.02 and abs(distances.max() - high) < 0.02
    assert intrinsics[:, 0, 0].mean() == pytest.approx(synthetic.DTU_FOCAL_PER_WIDTH * 400, rel=1e-3)
    assert scale_mat[0, 0] == pytest.approx(synthetic.DTU_WORLD_SCALE, rel=1e-3)


def test_dtu_preset_scene_loads_through_the_neus_dataparser(tmp_path):
    from neurecon_ns.data.neus_dataparser import NeusDataParserConfig
    from neurecon_ns.scripts.synth import Synth

    Synth(preset="dtu", output_dir=tmp_path / "scene", width=80, height=60, num_views=9, mesh_resolution=48).main()
    description = json.loads((tmp_path / "scene" / "scene.json").read_text())
    assert (description["shape"], description["layout"], description["width"]) == ("building", "dtu", 80)
    assert description["background"] == "environment"
    parser = NeusDataParserConfig(data=tmp_path / "scene", eval_mode="interval").setup()
    train, test = parser.get_dataparser_outputs("train"), parser.get_dataparser_outputs("test")
    assert (len(train.cameras), len(test.cameras)) == (7, 2)
    assert float(train.cameras.fx[0]) == pytest.approx(723.08 * 80 / 400, rel=1e-5)
    assert 1.0 / train.dataparser_scale == pytest.approx(synthetic.DTU_WORLD_SCALE)
    assert len(train.metadata["fg_mask_filenames"]) == 7
    masks = [np.asarray(Image.open(path))[..., 0] > 127 for path in train.metadata["fg_mask_filenames"]]
    assert all(0.05 < mask.mean() < 0.9 for mask in masks)
