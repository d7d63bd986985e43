"""Shared fixtures: synthetic scenes are rendered once per test session into a temporary directory."""

from pathlib import Path

import pytest

from neurecon_ns.data.synthetic import write_scene

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
