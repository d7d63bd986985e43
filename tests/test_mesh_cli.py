"""`neurecon mesh`, `neurecon eval-mesh`, nerfstudio's exporter contract and `ns-eval` on tiny runs of every method."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from neurecon_ns.errors import UserInputError
from neurecon_ns.mesh.extract import extract_level_set
from neurecon_ns.scripts.eval_mesh import EvalMesh
from neurecon_ns.scripts.mesh import Mesh

METHODS = ("neus-dtu", "volsdf-dtu", "unisurf-dtu", "neus-fast")


@pytest.fixture(scope="module")
def tiny_runs(small_scene, tmp_path_factory):
    """Each method trained for 10 steps with tiny networks on the small synthetic scene, one view of eight held
    out for evaluation: method -> config.yml."""
    from neurecon_ns.training import method_config, small_cpu_config, train

    output_dir = tmp_path_factory.mktemp("tiny_runs")
    configs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # networks this small run faster on one thread than on contended ones
    for method in METHODS:
        config = small_cpu_config(method_config(method), small_scene.output_dir, output_dir, steps=10, hidden_dim=32, num_layers=2)
        config.pipeline.datamanager.dataparser.eval_mode = "interval"
        train(config)
        configs[method] = config.get_base_dir() / "config.yml"
    yield configs
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaded_runs(tiny_runs):
    from neurecon_ns.runs import load_run

    # "test" sets up the eval images as ns-eval does
    return {method: load_run(path, test_mode="test", device="cpu") for method, path in tiny_runs.items()}


def mesh_command(config_path, output_path, **options):
    return Mesh(load_config=config_path, output_path=output_path, progress=False, device="cpu", **options)


@pytest.mark.parametrize("method", METHODS)
def test_mesh_in_data_units_is_the_training_space_mesh_through_the_scene_transform(method, tiny_runs, loaded_runs, small_scene, tmp_path):
    mesh_command(tiny_runs[method], tmp_path / "unit.ply", resolution=40, space="unit").main()
    mesh_command(tiny_runs[method], tmp_path / "data.obj", resolution=40).main()
    unit = trimesh.load(tmp_path / "unit.ply", force="mesh", process=False)
    data = trimesh.load(tmp_path / "data.obj", force="mesh", process=False)
    assert len(unit.faces) > 100 and len(data.faces) == len(unit.faces)
    # the data parser's transform maps the unit sphere to the scene's world frame, as scale_mat does
    assert np.allclose(loaded_runs[method].unit_to_data, small_scene.scale_mat, atol=1e-5)
    expected = np.asarray(unit.vertices) * small_scene.scale_mat[0, 0] + small_scene.scale_mat[:3, 3]
    assert np.allclose(np.asarray(data.vertices), expected, atol=1e-3)
    # within the sphere's cube, closed, and on the zero level set of the model
    assert np.abs(unit.vertices).max() <= 1.0 + 2.0 / 39 + 1e-6
    model = loaded_runs[method].model
    with torch.no_grad():
        level = model.level_set(torch.as_tensor(np.asarray(unit.vertices), dtype=torch.float32))
    voxel = 2.0 * (1 + 2.0 / 39) / 39
    assert level.abs().median() < 0.1 * voxel


@pytest.mark.parametrize("method", METHODS)
def test_coarse_to_fine_equals_dense_on_trained_models(method, loaded_runs):
    from test_mesh_extract import assert_same_mesh

    from neurecon_ns.mesh.extract import extract_level_set_dense

    model = loaded_runs[method].model
    box = ([-1.05] * 3, [1.05] * 3)
    with torch.no_grad():
        mesh = extract_level_set(model.level_set, *box, 45, block_resolution=12, progress=False)
        dense = extract_level_set_dense(model.level_set, *box, 45)
    assert_same_mesh(mesh, dense, voxel=2.1 / 44)


@pytest.mark.parametrize("method", METHODS)
def test_exporter_contract_level_set_is_the_geometry_networks_first_output(method, loaded_runs):
    """`ns-export marching-cubes` reads `config.sdf_field` and extracts `field.forward_geonetwork(x)[:, 0] = 0`:
    that must be the surface `neurecon mesh` extracts from `model.level_set`."""
    model = loaded_runs[method].model
    assert model.config.sdf_field is True
    mesh = extract_level_set(model.level_set, [-1.05] * 3, [1.05] * 3, 32, progress=False)
    vertices = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    normals = torch.as_tensor(np.asarray(mesh.vertex_normals), dtype=torch.float32)
    points = torch.cat([torch.rand(4096, 3) * 2 - 1, vertices + 0.01 * normals, vertices - 0.01 * normals])
    with torch.no_grad():
        exported = model.field.forward_geonetwork(points)[:, 0]
        level = model.level_set(points)
    assert torch.equal(torch.sign(exported), torch.sign(level))
    with torch.no_grad():
        assert model.field.forward_geonetwork(vertices)[:, 0].abs().max() < 0.05


def test_mesh_options_colours_culling_components_and_glb(tiny_runs, loaded_runs, tmp_path):
    config = tiny_runs["neus-dtu"]
    mesh_command(config, tmp_path / "plain.ply", resolution=40, space="unit").main()
    mesh_command(config, tmp_path / "culled.ply", resolution=40, space="unit", cull_unseen=True, keep_largest_component=True, vertex_colors=True).main()
    mesh_command(config, tmp_path / "colored.glb", resolution=40, vertex_colors=True).main()
    plain = trimesh.load(tmp_path / "plain.ply", process=False)
    culled = trimesh.load(tmp_path / "culled.ply", process=False)
    # the 10-step surface is larger than the object: the masks cut most of it away
    assert 0 < len(culled.faces) < len(plain.faces)
    assert len(trimesh.load(tmp_path / "colored.glb", force="mesh").faces) == len(plain.faces)

    # each vertex has the colour that surface rendering gives a ray hitting it head-on
    colors = np.asarray(culled.visual.vertex_colors)[:, :3].astype(np.float64) / 255.0
    assert colors.std() > 0
    from nerfstudio.cameras.rays import RayBundle

    model = loaded_runs["neus-dtu"].model
    index = np.linspace(0, len(culled.vertices) - 1, 20).astype(np.int64)
    vertices = torch.as_tensor(np.asarray(culled.vertices)[index], dtype=torch.float32)
    _, _, gradient = model.field.get_level_value_and_gradient(vertices)
    normals = torch.nn.functional.normalize(gradient, dim=-1)
    rays = RayBundle(
        origins=vertices + 0.1 * normals,
        directions=-normals,
        pixel_area=torch.ones(len(index), 1),
        nears=torch.zeros(len(index), 1),
        fars=torch.full((len(index), 1), 0.2),
    )
    model.eval()
    rendered = model.get_surface_outputs(rays)
    assert rendered["accumulation"].min() == 1.0
    assert np.abs(rendered["rgb"].detach().numpy() - colors[index]).max() < 3 / 255


def test_mesh_user_errors_are_one_sentence(tiny_runs, tmp_path):
    from neurecon_ns.training import method_config

    config = tiny_runs["neus-dtu"]
    with pytest.raises(UserInputError, match=r"mesh\.stl: unknown mesh format '\.stl'; end the output path with one of \.ply, \.obj, \.glb"):
        mesh_command(config, tmp_path / "mesh.stl").main()
    with pytest.raises(UserInputError, match=r"never crosses level 1000 .*\(min .*, max .*\)"):
        mesh_command(config, tmp_path / "mesh.ply", resolution=24, level=1000.0).main()

    # a run of another plugin's method
    foreign = method_config("nerfacto")
    foreign.output_dir = tmp_path / "outputs"
    foreign.set_timestamp()
    foreign.save_config()
    with pytest.raises(UserInputError, match="uses method 'nerfacto', which is not a neurecon-ns surface model"):
        mesh_command(foreign.get_base_dir() / "config.yml", tmp_path / "mesh.ply").main()

    # the run's config without its checkpoints
    from neurecon_ns.runs import read_run_config

    moved = read_run_config(config)
    moved.output_dir = tmp_path / "moved"
    moved.save_config()
    with pytest.raises(UserInputError, match=r"no checkpoint \(step-\*\.ckpt\)"):
        mesh_command(moved.get_base_dir() / "config.yml", tmp_path / "mesh.ply").main()


def run_console(command, cwd, timeout=600):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def bin_path(name):
    return str(Path(sys.executable).parent / name)


@pytest.mark.slow
def test_console_commands_mesh_and_eval_mesh(tiny_runs, small_scene, tmp_path):
    """The installed `neurecon` entry point: a mesh in the data's units, measured against the scene's exact
    mesh; a bad input ends in one line, without a traceback."""
    result = run_console(
        [bin_path("neurecon"), "mesh", "--load-config", str(tiny_runs["unisurf-dtu"]), "--output-path", "mesh.ply",
         "--resolution", "32", "--device", "cpu", "--no-progress"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "mesh.ply:" in result.stdout and "field queries" in result.stdout

    empty = tmp_path / "empty.ply"
    trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)).export(empty)
    result = run_console([bin_path("neurecon"), "eval-mesh", "--mesh", str(empty), "--gt", str(small_scene.gt_mesh_path)], cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: {empty}: the mesh is empty (no vertices or faces); extract it again."


def test_eval_mesh_writes_table_and_json(tiny_runs, small_scene, tmp_path, capsys):
    mesh_command(tiny_runs["neus-dtu"], tmp_path / "mesh.ply", resolution=40).main()
    EvalMesh(mesh=tmp_path / "mesh.ply", gt=small_scene.gt_mesh_path, num_points=20_000, thresholds=(1.0, 5.0)).main()
    report = json.loads((tmp_path / "mesh_eval.json").read_text())
    assert report["chamfer"] == pytest.approx((report["accuracy"] + report["completeness"]) / 2)
    assert set(report["fscore"]) == {"1.0", "5.0"} and report["fscore"]["1.0"] <= report["fscore"]["5.0"]
    assert 0 < report["normal_consistency"] <= 1
    # the exact mesh against itself: only the sampling separates the two point sets (about 0.4 apart here)
    EvalMesh(mesh=small_scene.gt_mesh_path, gt=small_scene.gt_mesh_path, output_path=tmp_path / "self.json", num_points=20_000, thresholds=(1.0,)).main()
    itself = json.loads((tmp_path / "self.json").read_text())
    assert itself["chamfer"] < 0.3 and itself["fscore"]["1.0"] > 0.99
    assert report["chamfer"] > 3 * itself["chamfer"]
    # measured to the triangles, the mesh against itself reads 0, and the model's mesh less than to the points
    EvalMesh(mesh=small_scene.gt_mesh_path, gt=small_scene.gt_mesh_path, output_path=tmp_path / "self_surface.json", num_points=20_000, to_surface=True).main()
    assert json.loads((tmp_path / "self_surface.json").read_text())["chamfer"] == pytest.approx(0.0, abs=1e-9)
    EvalMesh(mesh=tmp_path / "mesh.ply", gt=small_scene.gt_mesh_path, output_path=tmp_path / "surface.json", num_points=20_000, to_surface=True).main()
    to_surface = json.loads((tmp_path / "surface.json").read_text())
    assert report["chamfer"] - 1.5 * itself["chamfer"] < to_surface["chamfer"] < report["chamfer"]
    assert "Chamfer" in capsys.readouterr().out
    points = tmp_path / "points.ply"
    trimesh.PointCloud(trimesh.load(small_scene.gt_mesh_path).vertices).export(points)
    with pytest.raises(UserInputError, match="points.ply: a point cloud has no surface to measure to"):
        EvalMesh(mesh=tmp_path / "mesh.ply", gt=points, to_surface=True).main()


def test_eval_mesh_dtu_mode_on_fabricated_files(tmp_path):
    from test_mesh_eval import SCAN, sphere, sphere_points, write_dtu_files

    write_dtu_files(tmp_path / "dtu", sphere_points(11.0, 30_000, (20.0, 20.0, 20.0)))
    sphere(10.0, (20.0, 20.0, 20.0), subdivisions=4).export(tmp_path / "mesh.ply")
    EvalMesh(mesh=tmp_path / "mesh.ply", dtu_dir=tmp_path / "dtu", scan=SCAN, output_path=tmp_path / "dtu.json").main()
    report = json.loads((tmp_path / "dtu.json").read_text())
    assert report["chamfer"] == pytest.approx(1.0, abs=0.05)
    assert report["max_distance"] == 20.0 and set(report["fscore"]) == {"0.5", "1.0", "2.0"}
    assert report["counts"]["observed"] == report["counts"]["in_padded_box"] > 0
    with pytest.raises(UserInputError, match="give either --gt"):
        EvalMesh(mesh=tmp_path / "mesh.ply", gt=tmp_path / "mesh.ply", dtu_dir=tmp_path / "dtu", scan=SCAN).main()
    with pytest.raises(UserInputError, match="needs both --dtu-dir and --scan"):
        EvalMesh(mesh=tmp_path / "mesh.ply", scan=SCAN).main()


@pytest.mark.parametrize("method", METHODS)
def test_eval_images_give_psnr_and_ssim_offline(method, loaded_runs):
    """What `ns-eval` averages over the eval images (LPIPS, whose weights cannot be downloaded offline, is
    skipped by the model with a warning)."""
    metrics = loaded_runs[method].pipeline.get_average_eval_image_metrics()
    assert math.isfinite(metrics["psnr"]) and 0 < metrics["ssim"] <= 1


@pytest.mark.slow
def test_ns_eval_writes_psnr_and_ssim_offline(tiny_runs, tmp_path):
    result = run_console(
        [bin_path("ns-eval"), "--load-config", str(tiny_runs["neus-dtu"]), "--output-path", str(tmp_path / "out.json")],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads((tmp_path / "out.json").read_text())["results"]
    assert math.isfinite(results["psnr"]) and 0 < results["ssim"] <= 1
