"""Any nerfstudio data parser feeds the plugin's models: the region of interest goes into the unit sphere
(from the cameras, sparse points or a box), the map back to the data's units is kept, masks become
foreground masks, BlendedMVS camera files are read, and bad captures get one sentence."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from helpers import bin_path, ns_train_command, run_tool
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from PIL import Image

from neurecon_ns.data.conventions import flip_camera_axes
from neurecon_ns.data.datamanager import SurfaceDataManagerConfig
from neurecon_ns.data.mvsnet_dataparser import MVSNetDataParserConfig
from neurecon_ns.data.normalize import (
    PinholeViews,
    closest_point_to_lines,
    frustum_inscribed_radii,
    region_from_cameras,
    region_from_points,
)
from neurecon_ns.data.synthetic import BLENDER_SCALE, write_scene
from neurecon_ns.errors import UserInputError
from neurecon_ns.runs import unit_to_data_matrix


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """12 views with an environment behind the object, in the nerfstudio, Blender and NeuS layouts."""
    return write_scene(
        tmp_path_factory.mktemp("capture"), num_views=12, width=40, height=32, background="environment",
        formats=("neus", "nerfstudio", "blender"), mesh_resolution=64, holdout_every=4,
    )


def setup_datamanager(dataparser, data: Path, **options):
    torch.set_num_threads(1)
    return SurfaceDataManagerConfig(dataparser=dataparser, data=data, **options).setup(device="cpu")


def model_to_data(datamanager) -> np.ndarray:
    outputs = datamanager.train_dataparser_outputs
    return unit_to_data_matrix(outputs.dataparser_transform, outputs.dataparser_scale)


def opengl_views(c2w_opencv: np.ndarray, intrinsics: np.ndarray, width: int, height: int) -> PinholeViews:
    count = len(c2w_opencv)
    return PinholeViews(
        c2w=flip_camera_axes(c2w_opencv)[:, :3, :4],
        fx=np.full(count, intrinsics[0, 0]), fy=np.full(count, intrinsics[1, 1]),
        cx=np.full(count, intrinsics[0, 2]), cy=np.full(count, intrinsics[1, 2]),
        width=np.full(count, float(width)), height=np.full(count, float(height)),
    )


# -- the geometry of the region of interest --------------------------------------------------------------


def test_closest_point_to_lines_is_where_they_meet():
    target = np.array([0.3, -1.0, 2.0])
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(6, 3))
    origins = target - 4.0 * directions
    center, spread = closest_point_to_lines(origins, directions)
    assert np.allclose(center, target) and spread > 0.1
    _, parallel_spread = closest_point_to_lines(origins, np.tile([0.0, 0.0, 1.0], (6, 1)))
    assert parallel_spread < 1e-12


def test_inscribed_radius_is_distance_times_sine_of_half_the_narrower_field_of_view():
    # an OpenGL camera at z = 3 looking down -z at the origin, 64x48 pixels, f = 50
    views = PinholeViews(
        c2w=np.array([[[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 3.0]]]),
        fx=np.array([50.0]), fy=np.array([50.0]), cx=np.array([32.0]), cy=np.array([24.0]),
        width=np.array([64.0]), height=np.array([48.0]),
    )
    radius = frustum_inscribed_radii(np.zeros(3), views)[0]
    assert np.isclose(radius, 3.0 * np.sin(np.arctan(24.0 / 50.0)))
    # a point beside the view is out of it
    assert frustum_inscribed_radii(np.array([5.0, 0.0, 0.0]), views)[0] < 0


def test_region_from_cameras_of_an_orbit_contains_the_object(capture):
    views = opengl_views(capture.c2w_opencv_world, capture.intrinsics, capture.width, capture.height)
    region = region_from_cameras(views, "capture")
    world_scale, world_center = capture.scale_mat[0, 0], capture.scale_mat[:3, 3]
    # the cameras look at the unit sphere's centre (jittered by ~0.03)
    assert np.linalg.norm(region.center - world_center) < 0.1 * world_scale
    # nearest cameras stand 2.5 units away with a half field of view of asin(0.4) / 0.95: about 1.04 units
    assert 0.85 * world_scale < region.radius < 1.25 * world_scale


def test_region_from_points_keeps_the_object_and_drops_the_walls(capture):
    rng = np.random.default_rng(1)
    views = opengl_views(np.stack([c2w for c2w in capture.c2w_opencv_world]), capture.intrinsics, capture.width, capture.height)
    object_points = rng.normal(size=(500, 3))
    object_points = 0.5 * object_points / np.linalg.norm(object_points, axis=-1, keepdims=True)
    wall_points = rng.normal(size=(2000, 3))
    wall_points = 8.0 * wall_points / np.linalg.norm(wall_points, axis=-1, keepdims=True)
    to_world = capture.scale_mat
    points = np.concatenate([object_points, wall_points]) * to_world[0, 0] + to_world[:3, 3]
    region = region_from_points(points, views, "capture")
    assert np.linalg.norm(region.center - to_world[:3, 3]) < 0.05 * to_world[0, 0]
    assert np.isclose(region.radius / to_world[0, 0], 0.55, rtol=0.05)


# -- foreign data parsers through the data manager ---------------------------------------------------------


def test_nerfstudio_data_puts_the_object_in_the_unit_sphere_and_keeps_the_map_back(capture):
    datamanager = setup_datamanager(NerfstudioDataParserConfig(eval_mode="interval", eval_interval=4), capture.output_dir)
    assert datamanager.region.source == "cameras"
    data_from_model = model_to_data(datamanager)
    # the exact surface (world units) lies inside the unit sphere of the training space
    surface_world = trimesh.load(capture.gt_mesh_path).vertices
    surface_model = (surface_world - data_from_model[:3, 3]) @ np.linalg.inv(data_from_model[:3, :3]).T
    assert np.linalg.norm(surface_model, axis=-1).max() < 0.8
    # every training camera maps back onto its pose in transforms.json
    frames = json.loads(capture.transforms_path.read_text())["frames"]
    centers_data = np.array([frame["transform_matrix"] for frame in frames])[:, :3, 3]
    centers_model = datamanager.train_dataset.cameras.camera_to_worlds[:, :3, 3].double().numpy()
    centers_back = centers_model @ data_from_model[:3, :3].T + data_from_model[:3, 3]
    distances = np.linalg.norm(centers_back[:, None] - centers_data[None], axis=-1).min(axis=1)
    assert distances.max() < 1e-3 * capture.scale_mat[0, 0]
    assert np.linalg.norm(centers_model, axis=-1).min() > 1.0


def test_nerfstudio_masks_become_foreground_masks_not_a_sampling_region(capture):
    datamanager = setup_datamanager(NerfstudioDataParserConfig(eval_mode="interval", eval_interval=4), capture.output_dir)
    assert datamanager.train_dataparser_outputs.mask_filenames is None
    item = datamanager.train_dataset[0]
    expected = np.asarray(Image.open(datamanager.train_dataset.fg_mask_filenames[0])) > 127
    assert np.array_equal(item["fg_mask"][..., 0].numpy() > 0.5, expected)
    _, batch = datamanager.next_train(0)
    # rays are drawn everywhere, so the mask loss sees object and background
    assert 0.0 < batch["fg_mask"].mean() < 1.0


def test_blender_rgba_alpha_is_the_foreground_mask(capture):
    blender_dir = capture.blender_dir
    datamanager = setup_datamanager(BlenderDataParserConfig(), blender_dir)
    item = datamanager.train_dataset[1]
    rgba = np.asarray(Image.open(datamanager.train_dataset.image_filenames[1]))
    assert np.array_equal(item["fg_mask"][..., 0].numpy() > 0.5, rgba[..., 3] > 127)
    # the object lies in the unit sphere here too: Blender units are 1.5 times the scene's unit sphere
    data_from_model = model_to_data(datamanager)
    assert 0.95 * BLENDER_SCALE < np.cbrt(np.linalg.det(data_from_model[:3, :3])) < 1.3 * BLENDER_SCALE


def test_roi_box_in_data_units_becomes_the_unit_sphere(capture):
    scale, center = capture.scale_mat[0, 0], capture.scale_mat[:3, 3]
    box = tuple(center - 0.6 * scale) + tuple(center + 0.6 * scale)
    datamanager = setup_datamanager(
        NerfstudioDataParserConfig(eval_mode="interval", eval_interval=4), capture.output_dir, roi="box", roi_box=box
    )
    data_from_model = model_to_data(datamanager)
    assert np.allclose(data_from_model[:3, 3], center, atol=1e-3 * scale)
    assert np.isclose(np.cbrt(np.linalg.det(data_from_model[:3, :3])), 0.6 * np.sqrt(3.0) * scale, rtol=1e-4)


def test_sphere_containing_a_camera_is_refused(capture):
    scale, center = capture.scale_mat[0, 0], capture.scale_mat[:3, 3]
    box = tuple(center - 2.0 * scale) + tuple(center + 2.0 * scale)
    with pytest.raises(UserInputError, match=r"camera \d+ lies inside the region of interest.*roi-scale"):
        setup_datamanager(
            NerfstudioDataParserConfig(eval_mode="interval", eval_interval=4), capture.output_dir, roi="box", roi_box=box
        )


def test_transforms_without_intrinsics_is_one_sentence(capture, tmp_path):
    shutil.copytree(capture.output_dir / "image", tmp_path / "image")
    meta = json.loads(capture.transforms_path.read_text())
    del meta["fl_x"]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(UserInputError, match=r"transforms.json: camera intrinsic 'fl_x' is neither at the top level nor in frame 0"):
        setup_datamanager(NerfstudioDataParserConfig(), tmp_path)


def write_transforms(directory: Path, capture, c2w_opengl: np.ndarray) -> None:
    directory.mkdir(exist_ok=True)
    shutil.copytree(capture.output_dir / "image", directory / "image", dirs_exist_ok=True)
    meta = json.loads(capture.transforms_path.read_text())
    for frame, c2w in zip(meta["frames"], c2w_opengl):
        frame["transform_matrix"] = c2w.tolist()
        del frame["mask_path"]
    (directory / "transforms.json").write_text(json.dumps(meta))


def test_cameras_that_look_outward_are_refused(capture, tmp_path):
    # the orbit's cameras turned around: their axes still meet, but behind every camera
    c2w = flip_camera_axes(capture.c2w_opencv_world)
    c2w[:, :3, 0] *= -1
    c2w[:, :3, 2] *= -1
    write_transforms(tmp_path, capture, c2w)
    with pytest.raises(UserInputError, match="cameras do not surround a common region"):
        setup_datamanager(NerfstudioDataParserConfig(), tmp_path)


def test_forward_facing_cameras_are_refused(capture, tmp_path):
    c2w = np.tile(np.eye(4), (capture.num_views, 1, 1))
    c2w[:, 0, 3] = np.linspace(-1.0, 1.0, capture.num_views)
    write_transforms(tmp_path, capture, c2w)
    with pytest.raises(UserInputError, match="optical axes are \\(nearly\\) parallel"):
        setup_datamanager(NerfstudioDataParserConfig(), tmp_path)


# -- BlendedMVS camera files ---------------------------------------------------------------------------------


def write_mvsnet_layout(capture, directory: Path) -> Path:
    (directory / "blended_images").mkdir(parents=True)
    (directory / "cams").mkdir()
    for index, (image_path, c2w) in enumerate(zip(capture.image_paths, capture.c2w_opencv_world)):
        stem = f"{index:08d}"
        Image.open(image_path).convert("RGB").save(directory / "blended_images" / f"{stem}.jpg", quality=95)
        Image.open(image_path).convert("RGB").save(directory / "blended_images" / f"{stem}_masked.jpg")
        extrinsic = np.linalg.inv(c2w)
        lines = ["extrinsic", *(" ".join(f"{v:.9f}" for v in row) for row in extrinsic), "", "intrinsic"]
        lines += [" ".join(f"{v:.6f}" for v in row) for row in capture.intrinsics]
        lines += ["", "425.0 2.5 192 905.0"]
        (directory / "cams" / f"{stem}_cam.txt").write_text("\n".join(lines) + "\n")
    (directory / "cams" / "pair.txt").write_text("0\n")
    return directory


def test_mvsnet_cameras_match_the_scene_and_are_normalised(capture, tmp_path):
    scene = write_mvsnet_layout(capture, tmp_path / "blendedmvs")
    outputs = MVSNetDataParserConfig(data=scene).setup().get_dataparser_outputs("train")
    assert len(outputs.image_filenames) == capture.num_views
    assert all("_masked" not in path.name for path in outputs.image_filenames)
    expected = (flip_camera_axes(capture.c2w_opencv_world))[:, :3, :4]
    assert np.allclose(outputs.cameras.camera_to_worlds.numpy(), expected, atol=1e-4 * capture.scale_mat[0, 0])
    assert np.allclose(outputs.cameras.fx.numpy(), capture.intrinsics[0, 0], atol=1e-4)

    datamanager = setup_datamanager(MVSNetDataParserConfig(), scene)
    assert datamanager.region.source == "cameras"
    data_from_model = model_to_data(datamanager)
    scene_from_model = np.linalg.inv(capture.scale_mat) @ data_from_model
    # a similarity close to the scene's own unit sphere (same centre, radius about 1.04)
    assert np.linalg.norm(scene_from_model[:3, 3]) < 0.1
    assert 0.85 < np.cbrt(np.linalg.det(scene_from_model[:3, :3])) < 1.25


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda text: text.replace("intrinsic", "intrinsics"), "no 'intrinsic' line"),
        (lambda text: text.replace("extrinsic\n", "extrinsic\n1 2 3\n"), "'extrinsic' block must be 4 lines of 4 finite numbers"),
        (lambda text: text.replace("0.000000 0.000000 1.000000", "0 0 1 nan"), "'intrinsic' block must be 3 lines of 3"),
    ],
)
def test_malformed_mvsnet_camera_file_is_named(capture, tmp_path, edit, message):
    scene = write_mvsnet_layout(capture, tmp_path / "blendedmvs")
    camera_file = scene / "cams" / "00000003_cam.txt"
    camera_file.write_text(edit(camera_file.read_text()))
    with pytest.raises(UserInputError, match=f"00000003_cam.txt: .*{message}"):
        MVSNetDataParserConfig(data=scene).setup().get_dataparser_outputs("train")


def test_missing_mvsnet_camera_is_named(capture, tmp_path):
    scene = write_mvsnet_layout(capture, tmp_path / "blendedmvs")
    (scene / "cams" / "00000005_cam.txt").unlink()
    with pytest.raises(UserInputError, match="00000005_cam.txt: missing camera for 00000005.jpg"):
        MVSNetDataParserConfig(data=scene).setup().get_dataparser_outputs("train")


# -- every method of the plugin trains on a foreign parser ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", ["neus-dtu", "volsdf-dtu", "unisurf-dtu", "neus-nerfpp", "volsdf-nerfpp", "neus-fast"])
def test_every_method_trains_through_blender_data(capture, tmp_path, method):
    from neurecon_ns.training import train_short

    torch.set_num_threads(1)
    overrides = {}
    if method.endswith("nerfpp"):
        overrides = {"background_network.hidden_dim": 32, "background_network.num_layers": 2,
                     "background_network.skip_layers": (), "num_background_samples": 8}
    run = train_short(
        method, capture.output_dir, tmp_path, steps=8, mesh_resolution=40, num_eval_points=2000,
        overrides=overrides, dataparser=BlenderDataParserConfig(data=capture.blender_dir),
        hidden_dim=32, num_layers=2, rays_per_batch=64,
    )
    assert run.config_path.is_file() and list((run.config_path.parent / "nerfstudio_models").glob("*.ckpt"))
    assert run.trainer.pipeline.datamanager.region.source == "cameras"
    assert len(run.mesh_unit.faces) > 0 and np.isfinite(run.report.chamfer)


@pytest.mark.slow
def test_ns_train_on_a_nerfstudio_capture_then_a_mesh_in_the_capture_units(capture, tmp_path):
    """What a phone-capture user types: `ns-train neus-nerfpp nerfstudio-data --data <capture>`, then
    `neurecon mesh`; the mesh comes back in the units and frame of transforms.json (the capture's
    object spans about 50 of its units)."""
    command = ns_train_command("neus-nerfpp", capture.output_dir, steps=2)
    command += ["nerfstudio-data", "--eval-mode", "interval", "--eval-interval", "4"]
    result = run_tool(command, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (config,) = tmp_path.glob("outputs/*/neus-nerfpp/*/config.yml")
    mesh_path = tmp_path / "mesh.ply"
    result = run_tool(
        [bin_path("neurecon"), "mesh", "--load-config", str(config), "--output-path", str(mesh_path),
         "--resolution", "48", "--no-vertex-colors", "--no-progress"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # dataparser_transforms.json holds the map from the capture's units to the training space: it puts the
    # object inside the unit sphere, and the mesh, written in the capture's units, comes from inside it
    (transforms_path,) = config.parent.glob("dataparser_transforms.json")
    transforms = json.loads(transforms_path.read_text())
    data_from_model = unit_to_data_matrix(torch.tensor(transforms["transform"]), transforms["scale"])

    def to_model(points_data):
        return (points_data - data_from_model[:3, 3]) @ np.linalg.inv(data_from_model[:3, :3]).T

    object_model = to_model(trimesh.load(capture.gt_mesh_path, force="mesh").vertices)
    assert np.linalg.norm(object_model, axis=-1).max() < 0.8
    mesh_data = trimesh.load(mesh_path, force="mesh")
    assert np.linalg.norm(mesh_data.extents) > 10.0  # data units, not the unit sphere's
    assert np.linalg.norm(to_model(mesh_data.vertices), axis=-1).max() < 1.0 + 1e-3
