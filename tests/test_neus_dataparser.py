"""The IDR-NeuS data parser: cameras, normalisation, masks, and one clear error per bad input."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from neurecon_ns.data.neus_dataparser import NeusDataParserConfig, decompose_projection
from neurecon_ns.errors import UserInputError
from neurecon_ns.runs import unit_to_data_matrix


def parse(data: Path, split: str = "train", **options):
    return NeusDataParserConfig(data=data, **options).setup().get_dataparser_outputs(split=split)


def project_opengl(cameras, index: int, points: np.ndarray) -> np.ndarray:
    """Pixel coordinates (x right, y down, pixel centres at +0.5) of world points in camera `index`."""
    c2w = np.eye(4)
    c2w[:3, :4] = cameras.camera_to_worlds[index].numpy()
    c2w[:3, 1:3] *= -1  # OpenGL -> OpenCV axes
    w2c = np.linalg.inv(c2w)
    local = points @ w2c[:3, :3].T + w2c[:3, 3]
    assert np.all(local[:, 2] > 0), "points behind the camera"
    fx, fy = cameras.fx[index].item(), cameras.fy[index].item()
    cx, cy = cameras.cx[index].item(), cameras.cy[index].item()
    return np.stack([fx * local[:, 0] / local[:, 2] + cx, fy * local[:, 1] / local[:, 2] + cy], axis=-1)


def test_surface_points_project_inside_the_masks(small_scene):
    outputs = parse(small_scene.output_dir)
    surface_unit = trimesh.load(small_scene.gt_mesh_unit_path).vertices
    assert len(outputs.image_filenames) == small_scene.num_views
    for index, mask_path in enumerate(outputs.metadata["fg_mask_filenames"]):
        mask = np.asarray(Image.open(mask_path).convert("L")) > 127
        # dilate by one pixel: a vertex on the silhouette may fall in the neighbouring pixel
        dilated = mask.copy()
        dilated[1:] |= mask[:-1]
        dilated[:-1] |= mask[1:]
        dilated[:, 1:] |= dilated[:, :-1]
        dilated[:, :-1] |= dilated[:, 1:]
        pixels = np.floor(project_opengl(outputs.cameras, index, surface_unit)).astype(int)
        height, width = mask.shape
        assert np.all((pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height))
        assert dilated[pixels[:, 1], pixels[:, 0]].mean() > 0.999


def test_rays_through_mask_pixels_hit_the_object(small_scene):
    """nerfstudio's own ray generation agrees with the masks: rays of foreground pixels pass near the surface."""
    outputs = parse(small_scene.output_dir)
    surface = trimesh.load(small_scene.gt_mesh_unit_path)
    rays = outputs.cameras.generate_rays(camera_indices=0)
    mask = np.asarray(Image.open(outputs.metadata["fg_mask_filenames"][0]).convert("L")) > 127
    origins = rays.origins[torch.from_numpy(mask)].numpy()
    directions = rays.directions[torch.from_numpy(mask)].numpy()
    hits = surface.ray.intersects_any(origins, directions)
    assert hits.mean() > 0.95


def test_unit_sphere_normalisation_and_its_inverse(small_scene):
    outputs = parse(small_scene.output_dir)
    unit_to_data = unit_to_data_matrix(outputs.dataparser_transform, outputs.dataparser_scale)
    assert np.allclose(unit_to_data, small_scene.scale_mat, atol=1e-4)
    mesh_world = trimesh.load(small_scene.gt_mesh_path)
    mesh_unit = trimesh.load(small_scene.gt_mesh_unit_path)
    data_to_unit = np.linalg.inv(unit_to_data)
    mapped = mesh_world.vertices @ data_to_unit[:3, :3].T + data_to_unit[:3, 3]
    assert np.abs(mapped - mesh_unit.vertices).max() < 1e-4
    # every camera looks at the unit sphere from outside
    assert torch.all(outputs.cameras.camera_to_worlds[:, :3, 3].norm(dim=-1) > 1.0)


def test_decompose_projection_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        angle_axis = rng.normal(size=3)
        rotation = trimesh.transformations.rotation_matrix(np.linalg.norm(angle_axis), angle_axis)[:3, :3]
        center = rng.normal(size=3) * 3
        intrinsics = np.array([[rng.uniform(100, 900), rng.uniform(-2, 2), rng.uniform(50, 400)],
                               [0, rng.uniform(100, 900), rng.uniform(50, 300)], [0, 0, 1]])
        projection = intrinsics @ np.concatenate([rotation, -(rotation @ center)[:, None]], axis=1)
        projection *= rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 10)  # P is defined up to scale and sign
        K, c2w = decompose_projection(projection)
        assert np.allclose(K, intrinsics, atol=1e-6)
        assert np.allclose(c2w[:3, :3], rotation.T, atol=1e-8)
        assert np.allclose(c2w[:3, 3], center, atol=1e-8)


def test_interval_split_holds_out_every_kth_view(small_scene):
    train = parse(small_scene.output_dir, "train", eval_mode="interval", eval_interval=4)
    val = parse(small_scene.output_dir, "val", eval_mode="interval", eval_interval=4)
    assert len(train.image_filenames) == 6 and len(val.image_filenames) == 2
    assert not set(train.image_filenames) & set(val.image_filenames)


def test_masks_off_and_downscale(small_scene):
    outputs = parse(small_scene.output_dir, masks="off", downscale_factor=2)
    assert "fg_mask_filenames" not in outputs.metadata
    assert outputs.metadata["downscale_factor"] == 2


def test_shared_dtu_scan_parses(shared_dtu_scan):
    outputs = parse(shared_dtu_scan)
    assert len(outputs.image_filenames) == len(list((shared_dtu_scan / "image").glob("*.png")))
    cameras = outputs.cameras
    width, height = int(cameras.width[0]), int(cameras.height[0])
    # the centre of the unit sphere (the skull) projects into every mask
    for index, mask_path in enumerate(outputs.metadata["fg_mask_filenames"]):
        mask = np.asarray(Image.open(mask_path).convert("L")) > 127
        assert mask.shape == (height, width)
        x, y = np.floor(project_opengl(cameras, index, np.zeros((1, 3))))[0].astype(int)
        window = mask[max(y - 10, 0) : y + 10, max(x - 10, 0) : x + 10]
        assert window.any(), f"view {index}: the unit sphere's centre falls outside the mask"
    # DTU millimetres: the scale_mat radius is a few hundred mm
    assert 50 < 1.0 / outputs.dataparser_scale < 1000


# -- bad input: one sentence naming the file ---------------------------------------------------


@pytest.fixture
def scene_copy(small_scene, tmp_path):
    target = tmp_path / "scene"
    shutil.copytree(small_scene.output_dir, target)
    return target


def expect_error(data: Path, pattern: str, **options):
    with pytest.raises(UserInputError, match=pattern) as info:
        parse(data, **options)
    message = str(info.value)
    assert "\n" not in message
    return message


def rewrite_cameras(scene: Path, edit) -> None:
    path = scene / "cameras_sphere.npz"
    cameras = dict(np.load(path))
    edit(cameras)
    np.savez(path, **cameras)


def test_missing_directory(tmp_path):
    expect_error(tmp_path / "nowhere", "nowhere: scene directory not found")


def test_no_images(scene_copy):
    for path in (scene_copy / "image").iterdir():
        path.unlink()
    expect_error(scene_copy, r"image: no \.png or \.jpg images")


def test_no_image_directory(scene_copy):
    shutil.rmtree(scene_copy / "image")
    expect_error(scene_copy, "no image/ or images/ directory")


def test_mask_count_mismatch(scene_copy):
    (scene_copy / "mask" / "007.png").unlink()
    expect_error(scene_copy, "7 masks for 8 images")


def test_mask_size_mismatch(scene_copy):
    Image.new("RGB", (10, 10)).save(scene_copy / "mask" / "003.png")
    expect_error(scene_copy, "003.png: mask is 10x10")


def test_masks_required_but_missing(scene_copy):
    shutil.rmtree(scene_copy / "mask")
    shutil.rmtree(scene_copy / "masks")
    expect_error(scene_copy, "no mask/ directory", masks="on")
    assert "fg_mask_filenames" not in parse(scene_copy).metadata  # "auto" trains without


def test_mixed_image_sizes(scene_copy):
    Image.new("RGB", (20, 20)).save(scene_copy / "image" / "000005.png")
    expect_error(scene_copy, "000005.png: image is 20x20")


def test_missing_cameras_file(scene_copy):
    (scene_copy / "cameras_sphere.npz").unlink()
    expect_error(scene_copy, "cameras_sphere.npz: camera file not found")


def test_missing_world_mat(scene_copy):
    rewrite_cameras(scene_copy, lambda cameras: cameras.pop("world_mat_6"))
    expect_error(scene_copy, "key 'world_mat_6' is missing")


def test_singular_matrix(scene_copy):
    def make_singular(cameras):
        cameras["world_mat_2"][:, 1] = 0.0

    rewrite_cameras(scene_copy, make_singular)
    expect_error(scene_copy, "singular")


def test_non_finite_matrix(scene_copy):
    def poison(cameras):
        cameras["world_mat_4"][0, 0] = np.nan

    rewrite_cameras(scene_copy, poison)
    expect_error(scene_copy, "'world_mat_4' holds NaN")


def test_unreadable_cameras_file(scene_copy):
    (scene_copy / "cameras_sphere.npz").write_text("not a zip")
    expect_error(scene_copy, "not a readable .npz")


def truncate(path: Path) -> None:
    """Keep the file's header (PIL still opens it and reports its size) and cut its pixel data short."""
    data = path.read_bytes()
    path.write_bytes(data[: max(len(data) // 2, 60)])


def test_truncated_image_is_named_when_parsed(scene_copy):
    truncate(scene_copy / "image" / "000003.png")
    with Image.open(scene_copy / "image" / "000003.png") as image:
        assert image.size == (48, 40)  # the header alone gives no sign of the damage
    expect_error(scene_copy, r"000003\.png: the image data cannot be decoded")


def test_truncated_mask_is_named_when_parsed(scene_copy):
    truncate(scene_copy / "mask" / "005.png")
    expect_error(scene_copy, r"005\.png: the image data cannot be decoded")
    assert "fg_mask_filenames" not in parse(scene_copy, masks="off").metadata  # the fix the message names works


def test_truncated_image_of_another_parser_is_named_by_the_data_manager(scene_copy):
    """nerfstudio-data reads image sizes from transforms.json and never decodes an image itself."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from neurecon_ns.data.datamanager import SurfaceDataManagerConfig

    truncate(scene_copy / "image" / "000006.png")
    config = SurfaceDataManagerConfig(dataparser=NerfstudioDataParserConfig(), data=scene_copy)
    with pytest.raises(UserInputError, match=r"000006\.png: the image data cannot be decoded") as info:
        config.setup(device="cpu")
    assert "\n" not in str(info.value)
