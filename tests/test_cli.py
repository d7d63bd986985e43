"""nerfstudio's own commands drive the plugin end to end: ns-train, ns-render, ns-eval."""

import shutil

import pytest
from helpers import ns_render_interpolate, ns_train_command, run_tool


def test_ns_train_writes_config_checkpoint_and_transform(tiny_neus_run):
    run_dir = tiny_neus_run.parent
    assert list((run_dir / "nerfstudio_models").glob("step-*.ckpt"))
    assert (run_dir / "dataparser_transforms.json").is_file()


def test_ns_train_bad_data_is_one_sentence(tmp_path):
    result = run_tool(ns_train_command("neus-dtu", tmp_path / "missing", steps=2), cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "missing: scene directory not found" in result.stderr


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ns-render needs an ffmpeg binary on PATH (apt-get install ffmpeg)")
def test_ns_render_interpolate_writes_rgb_normal_depth(tiny_neus_run, tmp_path):
    output = tmp_path / "render"
    result = ns_render_interpolate(tiny_neus_run, output, ["rgb", "normal", "depth"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    frames = sorted(output.glob("*"))
    assert frames, "ns-render wrote nothing"
