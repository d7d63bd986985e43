"""Shared fixtures: synthetic scenes are rendered once per test session into a temporary directory, and the
tiny `ns-train neus-dtu` run that the command-line tests load is trained once on one of them.

In this process the CPU is taken to have no bf16 matrix units, so that `networks.precision: auto` means float32
on every machine and a test's tolerances do not depend on the CPU it runs on; the bfloat16 path is tested where
a test asks for it by name (tests/test_precision.py)."""

from pathlib import Path

import pytest
from helpers import train_tiny

from neurecon_ns.data.synthetic import write_scene


@pytest.fixture(autouse=True)
def cpu_without_bf16_units(monkeypatch):
    monkeypatch.setattr("neurecon_ns.utils.precision.cpu_flags", lambda *args: {"avx2", "fma"})


SHARED_DTU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dtu_scan65_400x300"


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory):
    """8 views at 48x40 (non-square on purpose), NeuS + nerfstudio layouts."""
    return write_scene(tmp_path_factory.mktemp("small_scene"), num_views=8, width=48, height=40, mesh_resolution=96)


@pytest.fixture(scope="session")
def training_scene(tmp_path_factory):
    """The scene the convergence tests train on: 32 views at 64x64 with masks."""
    return write_scene(tmp_path_factory.mktemp("training_scene"), num_views=32, width=64, height=64, mesh_resolution=160)


@pytest.fixture(scope="session")
def shared_dtu_scan():
    if not SHARED_DTU.is_dir():
        pytest.skip(f"the real DTU sample is not present at {SHARED_DTU} (it ships beside the repo as shared/data)")
    return SHARED_DTU


@pytest.fixture(scope="session")
def tiny_neus_run(small_scene, tmp_path_factory):
    """`ns-train neus-dtu` for 2 steps with tiny networks on `small_scene`; returns its config.yml.

    Shared by every test that only loads the run (ns-render, neurecon camera-path, neurecon video): each
    ns-train costs tens of seconds on CPU. After 2 steps the SDF is still close to its initial sphere.
    """
    return train_tiny("neus-dtu", small_scene.output_dir, tmp_path_factory.mktemp("tiny_neus_run"), steps=2)
