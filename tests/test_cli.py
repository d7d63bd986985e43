"""nerfstudio's own commands drive the plugin end to end: ns-train, ns-render, ns-eval."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TINY_NEUS = [
    "--machine.device-type", "cpu",
    "--vis", "tensorboard",
    "--pipeline.datamanager.train-num-rays-per-batch", "64",
    "--pipeline.model.networks.geometry.hidden-dim", "32",
    "--pipeline.model.networks.geometry.num-layers", "2",
    "--pipeline.model.networks.geometry.skip-layers",
    "--pipeline.model.networks.geometry.feature-dim", "16",
    "--pipeline.model.networks.radiance.hidden-dim", "32",
    "--pipeline.model.networks.radiance.num-layers", "1",
    "--pipeline.model.sampler.num-uniform", "16",
    "--pipeline.model.sampler.num-importance", "16",
    "--pipeline.model.sampler.num-upsample-steps", "2",
    "--pipeline.model.eval-num-rays-per-chunk", "4096",
]


def run(command, cwd, timeout=600):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def bin_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@pytest.fixture(scope="module")
def tiny_neus_run(small_scene, tmp_path_factory):
    """`ns-train neus-dtu` for 4 steps with tiny networks; returns the config.yml path."""
    workdir = tmp_path_factory.mktemp("ns_train")
    result = run(
        [bin_path("ns-train"), "neus-dtu", "--data", str(small_scene.output_dir), "--output-dir", "outputs",
         "--max-num-iterations", "4", "--steps-per-save", "4", *TINY_NEUS],
        cwd=workdir,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    configs = list(workdir.glob("outputs/*/neus-dtu/*/config.yml"))
    assert len(configs) == 1
    return configs[0]


def test_ns_train_writes_config_checkpoint_and_transform(tiny_neus_run):
    run_dir = tiny_neus_run.parent
    assert list((run_dir / "nerfstudio_models").glob("step-*.ckpt"))
    assert (run_dir / "dataparser_transforms.json").is_file()


def test_ns_train_bad_data_is_one_sentence(tmp_path):
    result = run([bin_path("ns-train"), "neus-dtu", "--data", str(tmp_path / "missing"), *TINY_NEUS], cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "missing: scene directory not found" in result.stderr


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ns-render needs an ffmpeg binary on PATH (apt-get install ffmpeg)")
def test_ns_render_interpolate_writes_rgb_normal_depth(tiny_neus_run, tmp_path):
    output = tmp_path / "render"
    result = run(
        [bin_path("ns-render"), "interpolate", "--load-config", str(tiny_neus_run), "--output-path", str(output),
         "--output-format", "images", "--rendered-output-names", "rgb", "normal", "depth",
         "--interpolation-steps", "1", "--frame-rate", "2", "--downscale-factor", "2"],
        cwd=tiny_neus_run.parents[4],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    frames = sorted(output.glob("*"))
    assert frames, "ns-render wrote nothing"
