"""A short CPU training of NeuS converges to the known shape, and the same judge rejects a wrong one.

The scene is an exact sphere of radius 0.6 seen by 32 cameras at 64x64 (`write_scene`, shape
"sphere"); the judge is the Chamfer distance between the extracted mesh and the exact surface, in
unit-sphere units, where one pixel at the object is about 0.04. A sphere 10% too large lies 0.06 from
the true one everywhere, so a judge that passes it would not be measuring the shape.
"""

import pytest
from helpers import BF16_ON_BF16_UNITS

from neurecon_ns.data.shapes import get_shape, scaled, surface_mesh
from neurecon_ns.data.synthetic import write_scene
from neurecon_ns.mesh.evaluate import compare_meshes
from neurecon_ns.training import train_short

NEUS_STEPS = 400
NEUS_CHAMFER_BOUND = 0.05
"""Measured 0.030 after 400 steps (seed 0, 2 CPU cores), 0.0305 with bf16 products; 0.05 is about 1.2 pixels at
the object."""


FAST_STEPS = 300
FAST_CHAMFER_BOUND = 0.035
"""neus-fast at its CPU size (`small_cpu_config`: 8-level grid, 512 rays): measured 0.017 after 300 steps
(seed 0, 2 CPU cores), under half a pixel, and 0.0161 with bf16 products; the spheres 10% larger and smaller lie 0.06 from the true one
everywhere, and the test requires both to be farther than the bound from the same mesh."""


@pytest.fixture(scope="module")
def sphere_scene(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("sphere_scene"), shape="sphere", num_views=32, width=64, height=64, mesh_resolution=160)


@pytest.fixture(scope="module", params=["fp32", BF16_ON_BF16_UNITS])
def neus_run(request, sphere_scene, tmp_path_factory):
    overrides = {"networks.precision": request.param}
    return train_short("neus-dtu", sphere_scene.output_dir, tmp_path_factory.mktemp("neus"), NEUS_STEPS, overrides=overrides)


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def fast_run(request, sphere_scene, tmp_path_factory):
    """neus-fast with its networks' products in float32, and in bfloat16 (docs/speed.md, "Precision")."""
    overrides = {"networks.precision": request.param}
    return train_short("neus-fast", sphere_scene.output_dir, tmp_path_factory.mktemp("neus_fast"), FAST_STEPS, overrides=overrides)


@pytest.mark.slow
def test_neus_converges_to_the_exact_surface(neus_run):
    print(f"measured: neus-dtu ({neus_run.trainer.pipeline.model.field.resolved_precision}) sphere Chamfer {neus_run.report.chamfer:.4f}")
    assert neus_run.report.chamfer < NEUS_CHAMFER_BOUND, neus_run.report


@pytest.mark.slow
def test_the_same_judge_rejects_a_sphere_10_percent_too_large(neus_run):
    wrong = surface_mesh(scaled(get_shape("sphere"), 1.1), resolution=160)
    report = compare_meshes(neus_run.mesh_unit, wrong, num_points=30_000)
    # the mesh is closer to the truth than to a sphere 0.06 away from it everywhere
    assert report.chamfer > neus_run.report.chamfer, (report, neus_run.report)


@pytest.mark.slow
def test_neus_fast_converges_to_the_exact_surface_and_not_to_a_wrong_one(fast_run):
    """The hash-grid preset, on the same scene and judge: within FAST_CHAMFER_BOUND of the exact sphere, and
    farther than that from spheres 10% larger or smaller (0.06 from the true one everywhere), in both precisions."""
    print(f"measured: neus-fast ({fast_run.trainer.pipeline.model.field.resolved_precision}) sphere Chamfer {fast_run.report.chamfer:.4f}")
    assert fast_run.report.chamfer < FAST_CHAMFER_BOUND, fast_run.report
    for factor in (0.9, 1.1):
        wrong = surface_mesh(scaled(get_shape("sphere"), factor), resolution=160)
        assert compare_meshes(fast_run.mesh_unit, wrong, num_points=30_000).chamfer > FAST_CHAMFER_BOUND

