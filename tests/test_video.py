"""Showcase videos: `neurecon video` writes rgb | normal | mesh along a camera path; every method renders rgb,
normal, depth and accumulation along a path as `ns-render camera-path` does; user mistakes are one sentence."""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from helpers import bin_path, run_tool

from neurecon_ns.errors import UserInputError
from neurecon_ns.render.camera_paths import camera_path_dict, make_camera_path, vertical_fov_deg
from neurecon_ns.render.video import check_ffmpeg, load_mesh, read_camera_path, side_by_side

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="videos are written through ffmpeg (apt-get install ffmpeg)")

def one_sentence(result, expected: str) -> None:
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def small_circle_json(train_c2w, path: Path, frames: int, width: int, height: int) -> Path:
    c2w = make_camera_path("small-circle", train_c2w, [0, 3, 5], frames)
    path.write_text(json.dumps(camera_path_dict(c2w, vertical_fov_deg(40.0, 40), width, height, fps=10.0)))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# pieces


def test_side_by_side_pads_to_even_sides():
    panels = [np.full((15, 11, 3), value, dtype=np.uint8) for value in (10, 20, 30)]
    row = side_by_side(panels)
    assert row.shape == (16, 34, 3)
    assert (row[:15, 11:22] == 20).all() and (row[15] == 0).all()


def test_missing_ffmpeg_is_one_sentence(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserInputError, match="ffmpeg was not found on PATH .* install it"):
        check_ffmpeg()


def test_camera_path_file_errors_name_the_file(tmp_path):
    with pytest.raises(UserInputError, match="missing.json: camera path not found"):
        read_camera_path(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UserInputError, match="broken.json: not valid JSON"):
        read_camera_path(broken)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"render_height": 10, "render_width": 10, "seconds": 1.0}))
    with pytest.raises(UserInputError, match="partial.json: key 'camera_path' is missing"):
        read_camera_path(partial)


def test_empty_mesh_is_one_sentence(tmp_path):
    points_only = trimesh.Trimesh(vertices=np.random.default_rng(0).random((5, 3)), faces=np.zeros((0, 3), dtype=np.int64))
    points_only.export(tmp_path / "empty.ply")
    with pytest.raises(UserInputError, match="empty.ply: the mesh is empty"):
        load_mesh(tmp_path / "empty.ply")


# ---------------------------------------------------------------------------------------------------------------------
# every method along a camera path, as ns-render camera-path renders it


@pytest.mark.slow
@needs_ffmpeg
@pytest.mark.parametrize("method", ["neus-dtu", "volsdf-dtu", "unisurf-dtu"])
def test_every_method_renders_rgb_normal_depth_accumulation_along_a_path(method, small_scene, tmp_path):
    from nerfstudio.scripts.render import _render_trajectory_video

    from neurecon_ns.mesh.model_mesh import extract_model_surface
    from neurecon_ns.render.rasterize import MeshRenderer
    from neurecon_ns.render.video import write_showcase
    from neurecon_ns.training import method_config, small_cpu_config, train

    config = small_cpu_config(method_config(method), small_scene.output_dir, tmp_path / "run", steps=1,
                              hidden_dim=16, num_layers=2, rays_per_batch=64)
    torch.manual_seed(0)
    pipeline = train(config).pipeline
    pipeline.eval()
    train_c2w = pipeline.datamanager.train_dataset.cameras.camera_to_worlds.numpy()
    cameras, fps = read_camera_path(small_circle_json(train_c2w, tmp_path / "path.json", 2, 20, 16))

    # what `ns-render camera-path` runs once it has loaded the pipeline and read the file
    _render_trajectory_video(pipeline, cameras, tmp_path / "render", ["rgb", "normal", "depth", "accumulation"],
                             seconds=2 / fps, output_format="images", image_format="png")
    frames = sorted((tmp_path / "render").glob("*.png"))
    assert len(frames) == 2

    mesh = extract_model_surface(pipeline.model, resolution=32)
    cameras, fps = read_camera_path(tmp_path / "path.json")
    times = write_showcase(tmp_path / "showcase.mp4", cameras, fps, model=pipeline.model,
                           mesh_renderer=MeshRenderer(mesh), progress=False)
    assert times.num_frames == 2
    import mediapy

    video = mediapy.read_video(tmp_path / "showcase.mp4")
    assert video.shape == (2, 16, 3 * 20, 3)


# ---------------------------------------------------------------------------------------------------------------------
# neurecon video on a run written by ns-train


@pytest.mark.slow
@needs_ffmpeg
def test_showcase_in_two_commands(tiny_neus_run):
    """camera-path then video: a 3-panel mp4 with the requested frames, the mesh drawn in its panel."""
    workdir = tiny_neus_run.parents[4]
    path_json = workdir / "circle.json"
    result = run_tool([bin_path("neurecon"), "camera-path", "--load-config", str(tiny_neus_run), "--kind", "small-circle",
                       "--views", "0", "3", "5", "--frames", "4", "--resolution", "32", "24", "--output", str(path_json)],
                      cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_tool([bin_path("neurecon"), "video", "--load-config", str(tiny_neus_run), "--camera-path", str(path_json),
                       "--output", "showcase.mp4", "--mesh-resolution", "32", "--mesh-background", "1.0"], cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rendering frames" in result.stderr  # the progress bar
    import mediapy

    video = mediapy.read_video(workdir / "showcase.mp4")
    assert video.shape == (4, 24, 3 * 32, 3)
    mesh_panel = video[:, :, 64:].astype(np.float64)
    # the untrained SDF is a sphere about the origin: grey shading on a white background, in every frame
    assert ((mesh_panel.min(axis=-1) < 200).mean(axis=(1, 2)) > 0.05).all()
    assert ((mesh_panel.min(axis=-1) > 245).mean(axis=(1, 2)) > 0.05).all()


@pytest.mark.slow
def test_video_errors_are_one_sentence(tiny_neus_run, tmp_path):
    workdir = tiny_neus_run.parents[4]
    train_c2w = np.tile(np.eye(4), (8, 1, 1))
    train_c2w[:, :3, 3] = [[3 * np.cos(a), 3 * np.sin(a), 0.5] for a in np.linspace(0, 2, 8)]
    path_json = small_circle_json(train_c2w, tmp_path / "path.json", 2, 16, 12)

    no_ffmpeg_env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    result = run_tool([bin_path("neurecon"), "video", "--load-config", str(tiny_neus_run), "--camera-path", str(path_json),
                       "--output", str(tmp_path / "out.mp4")], cwd=workdir, env=no_ffmpeg_env)
    one_sentence(result, "ffmpeg was not found on PATH")

    points_only = trimesh.Trimesh(vertices=np.random.default_rng(0).random((5, 3)), faces=np.zeros((0, 3), dtype=np.int64))
    points_only.export(tmp_path / "empty.ply")
    result = run_tool([bin_path("neurecon"), "video", "--load-config", str(tiny_neus_run), "--camera-path", str(path_json),
                       "--mesh", str(tmp_path / "empty.ply"), "--output", str(tmp_path / "out.mp4")], cwd=workdir)
    one_sentence(result, "empty.ply: the mesh is empty")

    result = run_tool([bin_path("neurecon"), "video", "--load-config", str(tiny_neus_run), "--camera-path", str(tmp_path / "nope.json"),
                       "--output", str(tmp_path / "out.mp4")], cwd=workdir)
    one_sentence(result, "nope.json: camera path not found")
