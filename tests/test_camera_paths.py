"""Camera paths: each kind goes through the views it names, has the requested length, and is read back by
nerfstudio as written; `neurecon camera-path` and `ns-render camera-path` work on a tiny synthetic run."""

import json
import math
import shutil

import numpy as np
import pytest
from helpers import bin_path, run_tool

from neurecon_ns.data.conventions import flip_camera_axes
from neurecon_ns.data.synthetic import camera_poses_unit
from neurecon_ns.render.camera_paths import (
    angle_about_axis,
    camera_path_dict,
    circumcircle,
    ease_in_out,
    interpolate_poses,
    keyframe_indices,
    make_camera_path,
    mean_up,
    vertical_fov_deg,
)

NUM_VIEWS = 16


@pytest.fixture(scope="module")
def train_c2w():
    """OpenGL camera-to-world matrices of the synthetic scene's cameras (unit-sphere space, +z up)."""
    return flip_camera_axes(camera_poses_unit(NUM_VIEWS, seed=3))


def assert_rotations(c2w):
    rotations = c2w[:, :3, :3]
    np.testing.assert_allclose(rotations @ np.transpose(rotations, (0, 2, 1)), np.broadcast_to(np.eye(3), rotations.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-9)


def assert_looks_at(c2w, point):
    """The optical axis (-z) of every pose goes through `point`."""
    to_point = point - c2w[:, :3, 3]
    to_point /= np.linalg.norm(to_point, axis=1, keepdims=True)
    np.testing.assert_allclose(np.einsum("nk,nk->n", to_point, -c2w[:, :3, 2]), 1.0, atol=1e-9)


def max_step(c2w):
    return float(np.linalg.norm(np.diff(c2w[:, :3, 3], axis=0), axis=1).max())


# ---------------------------------------------------------------------------------------------------------------------
# geometry


def test_circumcircle_of_points_on_a_known_circle():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=3)
    normal /= np.linalg.norm(normal)
    axis_1 = np.cross(normal, [1.0, 0.0, 0.0])
    axis_1 /= np.linalg.norm(axis_1)
    axis_2 = np.cross(normal, axis_1)
    center, radius = np.array([0.3, -1.2, 2.0]), 1.7
    points = [center + radius * (np.cos(a) * axis_1 + np.sin(a) * axis_2) for a in (0.2, 1.9, 4.0)]
    found_center, found_normal, found_radius = circumcircle(*points)
    np.testing.assert_allclose(found_center, center, atol=1e-12)
    np.testing.assert_allclose(found_radius, radius, atol=1e-12)
    np.testing.assert_allclose(found_normal, normal, atol=1e-12)  # a -> b -> c is counter-clockwise about +normal
    with pytest.raises(ValueError, match="one line"):
        circumcircle(np.zeros(3), np.ones(3), 2.0 * np.ones(3))


def test_angle_about_axis_is_counter_clockwise_in_zero_to_two_pi():
    axis = np.array([0.0, 0.0, 1.0])
    assert math.isclose(angle_about_axis(np.array([1.0, 0, 0]), np.array([0.0, 1, 5]), axis), math.pi / 2)
    assert math.isclose(angle_about_axis(np.array([1.0, 0, 0]), np.array([0.0, -1, 0]), axis), 3 * math.pi / 2)


def test_ease_in_out_starts_and_stops_at_rest():
    np.testing.assert_allclose(ease_in_out(np.array([0.0, 0.5, 1.0])), [0.0, 0.5, 1.0], atol=1e-15)
    step = 1e-6
    assert ease_in_out(step) < 1e-10 and 1.0 - ease_in_out(1.0 - step) < 1e-10  # zero speed at both ends
    assert np.all(np.diff(ease_in_out(np.linspace(0, 1, 50))) > 0)


# ---------------------------------------------------------------------------------------------------------------------
# the kinds


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("num_frames", [7, 40])
def test_interpolate_shows_every_named_view_at_its_keyframe(train_c2w, loop, num_frames):
    views = [2, 9, 5, 11, 0, 14, 7]
    path = make_camera_path("interpolate", train_c2w, views, num_frames, loop=loop)
    assert path.shape == (num_frames, 4, 4)
    assert_rotations(path)
    frames = keyframe_indices(len(views), num_frames, loop)
    for view, frame in zip(views, frames):  # a loop's final key (frame num_frames) is frame 0 again
        np.testing.assert_allclose(path[frame % num_frames], train_c2w[view], atol=1e-9)
    if not loop:
        assert frames[-1] == num_frames - 1


def test_interpolate_moves_smoothly_between_views(train_c2w):
    views = [0, 3, 6]
    path = interpolate_poses(train_c2w[views], 61)
    gaps = max(np.linalg.norm(train_c2w[a, :3, 3] - train_c2w[b, :3, 3]) for a, b in ((0, 3), (3, 6)))
    assert max_step(path) < gaps / 10  # 30 frames per segment: no jumps


def test_spiral_circles_the_mean_pose_and_looks_at_one_point(train_c2w):
    views = list(range(NUM_VIEWS))
    path = make_camera_path("spiral", train_c2w, views, 90, turns=2.0)
    assert path.shape == (90, 4, 4)
    assert_rotations(path)
    # whole turns of cos, sin and sin(t / 2): the frames average out to the mean camera centre
    np.testing.assert_allclose(path[:, :3, 3].mean(axis=0), train_c2w[:, :3, 3].mean(axis=0), atol=1e-9)
    forward = -train_c2w[:, :3, 2].sum(axis=0)
    forward /= np.linalg.norm(forward)
    center = train_c2w[:, :3, 3].mean(axis=0)
    focus = center + ((np.zeros(3) - center) @ forward) * forward
    assert_looks_at(path, focus)
    assert np.ptp(path[:, :3, 3], axis=0).max() > 0.5  # it does move


@pytest.mark.parametrize("loop", [False, True])
def test_small_circle_passes_through_its_three_views(train_c2w, loop):
    views = [1, 6, 12]
    a, b, c = train_c2w[views, :3, 3]
    path = make_camera_path("small-circle", train_c2w, views, 60, loop=loop)
    assert path.shape == (60, 4, 4)
    assert_rotations(path)
    assert_looks_at(path, np.zeros(3))
    center, normal, radius = circumcircle(a, b, c)
    offsets = path[:, :3, 3] - center
    np.testing.assert_allclose(np.linalg.norm(offsets, axis=1), radius, atol=1e-9)  # on the circle ...
    np.testing.assert_allclose(offsets @ normal, 0.0, atol=1e-9)  # ... in its plane
    np.testing.assert_allclose(path[0, :3, 3], a, atol=1e-9)
    angles = angle_about_axis(a - center, offsets, normal)
    angle_b, angle_c = angle_about_axis(a - center, np.stack([b, c]) - center, normal)
    assert np.all(np.diff(angles[1:]) > 0)  # one way round
    if loop:
        assert angles[-1] > angle_c  # goes on past c back towards a
    else:
        np.testing.assert_allclose(path[-1, :3, 3], c, atol=1e-9)
    # b is on the arc between two consecutive frames
    assert angles[1:].min() < angle_b < angles.max()
    nearest = np.linalg.norm(path[:, :3, 3] - b, axis=1).min()
    assert nearest <= max_step(path)


def test_great_circle_goes_from_one_view_to_the_other_about_the_target(train_c2w):
    views = [4, 13]
    a, b = train_c2w[views, :3, 3]
    target = np.array([0.05, -0.02, 0.1])
    path = make_camera_path("great-circle", train_c2w, views, 45, target=target)
    assert path.shape == (45, 4, 4)
    assert_rotations(path)
    assert_looks_at(path, target)
    np.testing.assert_allclose(path[0, :3, 3], a, atol=1e-9)
    np.testing.assert_allclose(path[-1, :3, 3], b, atol=1e-9)
    normal = np.cross(a - target, b - target)
    np.testing.assert_allclose((path[:, :3, 3] - target) @ normal, 0.0, atol=1e-9)  # in the plane of target, a, b
    # with easing the first and last steps are the shortest
    steps = np.linalg.norm(np.diff(path[:, :3, 3], axis=0), axis=1)
    assert steps[0] < steps[len(steps) // 2] and steps[-1] < steps[len(steps) // 2]


def test_spherical_spiral_starts_at_the_first_view_and_rises(train_c2w):
    views = [2, 7, 12]
    a, b, c = train_c2w[views, :3, 3]
    turns, rise_deg = 2.0, 25.0
    path = make_camera_path("spherical-spiral", train_c2w, views, 120, turns=turns, rise_deg=rise_deg, ease=False)
    assert path.shape == (120, 4, 4)
    assert_rotations(path)
    assert_looks_at(path, np.zeros(3))
    np.testing.assert_allclose(path[0, :3, 3], a, atol=1e-9)
    center, normal, _ = circumcircle(a, b, c)
    normal = normal if normal @ mean_up(train_c2w) >= 0 else -normal
    sphere_center = center + normal * ((np.zeros(3) - center) @ normal)
    radius = np.linalg.norm(a - sphere_center)
    # the sphere holds the three named views and every frame
    np.testing.assert_allclose(np.linalg.norm(np.stack([b, c]) - sphere_center, axis=1), radius, atol=1e-9)
    offsets = path[:, :3, 3] - sphere_center
    np.testing.assert_allclose(np.linalg.norm(offsets, axis=1), radius, atol=1e-9)
    elevation = np.degrees(np.arcsin(offsets @ normal / radius))
    np.testing.assert_allclose(elevation[-1] - elevation[0], rise_deg, atol=1e-6)
    assert np.all(np.diff(elevation) > 0)
    azimuth = np.unwrap(angle_about_axis(a - center, offsets, normal))
    np.testing.assert_allclose(azimuth[-1] - azimuth[0], 2 * np.pi * turns, atol=1e-6)


@pytest.mark.parametrize(
    "kind, views, message",
    [
        ("small-circle", [1, 2], "needs exactly 3 view ids, but 2 were given"),
        ("great-circle", [1, 99], "view id 99 does not exist: the run has 16 training views, ids 0 to 15"),
        ("interpolate", [3], "needs at least 2 view ids"),
        ("spherical-spiral", [1, 2, 3, 4], "needs exactly 3"),
        ("great-circle", [5, 5], "on one line"),
    ],
)
def test_wrong_views_are_one_sentence(train_c2w, kind, views, message):
    with pytest.raises(ValueError, match=message):
        make_camera_path(kind, train_c2w, views, 30)


def test_spiral_past_the_pole_is_refused(train_c2w):
    with pytest.raises(ValueError, match="pole"):
        make_camera_path("spherical-spiral", train_c2w, [2, 7, 12], 30, rise_deg=120.0)


# ---------------------------------------------------------------------------------------------------------------------
# the json


def test_camera_path_json_reads_back_through_nerfstudio(train_c2w):
    from nerfstudio.cameras.camera_paths import get_path_from_json

    path = make_camera_path("small-circle", train_c2w, [1, 6, 12], 12)
    fov = vertical_fov_deg(fy=80.0, height=96)
    camera_json = json.loads(json.dumps(camera_path_dict(path, fov, 128, 96, fps=24.0, keyframes_c2w=train_c2w[[1, 6, 12]])))
    assert camera_json["seconds"] == pytest.approx(12 / 24.0)
    cameras = get_path_from_json(camera_json)
    assert len(cameras) == 12
    np.testing.assert_allclose(cameras.camera_to_worlds.numpy(), path[:, :3, :4], atol=1e-6)
    np.testing.assert_allclose(cameras.fy.numpy(), 80.0, rtol=1e-6)  # fov in, the same focal length out
    assert int(cameras.width[0]) == 128 and int(cameras.height[0]) == 96


# ---------------------------------------------------------------------------------------------------------------------
# on a run: neurecon camera-path, then ns-render camera-path


def test_camera_path_cli_writes_json_and_preview(tiny_neus_run, tmp_path):
    output = tmp_path / "circle.json"
    result = run_tool([bin_path("neurecon"), "camera-path", "--load-config", str(tiny_neus_run), "--kind", "small-circle",
                       "--views", "0", "3", "5", "--frames", "9", "--fps", "3", "--output", str(output), "--preview"],
                      cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    camera_json = json.loads(output.read_text())
    assert len(camera_json["camera_path"]) == 9
    assert (camera_json["render_width"], camera_json["render_height"]) == (48, 40)  # the training images' size
    assert camera_json["seconds"] == pytest.approx(3.0)
    assert camera_json["neurecon"]["views"] == [0, 3, 5]
    from PIL import Image

    with Image.open(output.with_suffix(".png")) as preview:
        pixels = np.asarray(preview.convert("RGB"))
    assert pixels.std() > 10  # a drawing, not a blank canvas
    # the path's own colour is in the picture
    assert np.any((pixels[..., 2] > 150) & (pixels[..., 0] < 80))


def test_camera_path_cli_wrong_view_is_one_sentence(tiny_neus_run, tmp_path):
    result = run_tool([bin_path("neurecon"), "camera-path", "--load-config", str(tiny_neus_run), "--kind", "great-circle",
                       "--views", "0", "8"], cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "view id 8 does not exist: the run has 8 training views, ids 0 to 7" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ns-render needs an ffmpeg binary on PATH (apt-get install ffmpeg)")
def test_ns_render_camera_path_round_trip(tiny_neus_run, tmp_path):
    """`ns-render camera-path` renders the file at its resolution, one image per frame, for rgb/normal/depth/accumulation."""
    path_json = tmp_path / "path.json"
    result = run_tool([bin_path("neurecon"), "camera-path", "--load-config", str(tiny_neus_run), "--kind", "spherical-spiral",
                       "--views", "0", "3", "5", "--frames", "3", "--resolution", "24", "20", "--output", str(path_json)],
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    output = tmp_path / "render"
    result = run_tool([bin_path("ns-render"), "camera-path", "--load-config", str(tiny_neus_run),
                       "--camera-path-filename", str(path_json), "--output-path", str(output),
                       "--output-format", "images", "--image-format", "png",
                       "--rendered-output-names", "rgb", "normal", "depth", "accumulation"],
                      cwd=tiny_neus_run.parents[4])  # the run's output_dir is relative to where ns-train ran
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    frames = sorted(output.glob("*.png"))
    assert len(frames) == 3
    from PIL import Image

    with Image.open(frames[0]) as image:
        assert image.size == (4 * 24, 20)  # four outputs side by side at the path's resolution
