"""neus-fast's pieces: the torch hash grid, numerical gradients, progressive levels, empty-space skipping."""

import math

import pytest
import torch

from neurecon_ns.data.shapes import sphere_sdf
from neurecon_ns.fields.hash_encoding import (
    HashGridConfig,
    InterpolateCorners,
    MultiResolutionGrid,
    ProgressiveHashEncoding,
    SecondDifferenceEnergy,
    interpolate_vertices,
    reference_grid_features,
)
from neurecon_ns.fields.sdf_field import GeometryNetworkConfig, SurfaceFieldConfig
from neurecon_ns.model_components.occupancy_grid import SurfaceOccupancyGrid


@pytest.mark.parametrize("quadratic_levels", [0, 2])
def test_grid_matches_the_level_by_level_reference(quadratic_levels):
    torch.manual_seed(0)
    # coarse levels fit the table densely, fine ones are hashed
    grid = MultiResolutionGrid([4, 9, 30, 77], features_per_level=2, log2_table_size=12, init_scale=1.0, quadratic_levels=quadratic_levels)
    assert grid.hashed.tolist() == [False, False, True, True]
    points = torch.rand(500, 3)
    points[:5] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.25, 1.0], [1.0, 0.0, 0.3], [0.999999, 0.0, 0.0]])
    assert torch.allclose(grid(points), reference_grid_features(grid, points), atol=1e-5)


def test_corner_interpolation_has_the_gradients_of_its_sum():
    """The hand-written backward of the grid's gather (table and weights) against finite differences, and its
    own backward (what autograd's double backward through the grid, the reference gradient path, runs)."""
    torch.manual_seed(0)
    table = torch.randn(50, 2, dtype=torch.float64, requires_grad=True)
    # two parts, as a grid with quadratic and trilinear levels has: 27 vertices x 4 points, 8 corners x 7 cells
    parts = []
    for vertices, points in ((27, 4), (8, 7)):
        rows = torch.randint(0, 50, (vertices, points))
        rows[:, 0] = 3  # a point whose vertices share one row: their gradients add up
        parts.append((rows, [torch.rand(vertices, points, dtype=torch.float64, requires_grad=True) for _ in range(2)]))
    flat = [tensor for rows, weight_sets in parts for tensor in (rows, *weight_sets)]

    def interpolate(table, *flat):
        return InterpolateCorners.apply(table, 2, *flat)

    assert torch.autograd.gradcheck(interpolate, (table, *flat))
    assert torch.autograd.gradgradcheck(interpolate, (table, *flat))
    for k, sums in enumerate(interpolate_vertices(table, parts)):
        expected = torch.cat([torch.einsum("cb,cbf->bf", weight_sets[k], table[rows]) for rows, weight_sets in parts])
        assert torch.allclose(sums, expected)


@pytest.mark.parametrize("quadratic_levels", [0, 2])
def test_grid_jacobian_is_the_derivative_of_its_features(quadratic_levels):
    torch.manual_seed(0)
    grid = MultiResolutionGrid([4, 9, 30, 77], features_per_level=2, log2_table_size=12, init_scale=1.0, quadratic_levels=quadratic_levels).double()
    points = (torch.rand(40, 3, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    features, jacobian = grid.forward_with_jacobian(points)
    by_autograd = torch.stack([torch.autograd.grad(features[:, i].sum(), points, retain_graph=True)[0] for i in range(features.shape[1])], dim=1)
    assert torch.allclose(jacobian, by_autograd, atol=1e-9)


def test_grid_is_trilinear_between_vertices():
    torch.manual_seed(0)
    grid = MultiResolutionGrid([8], features_per_level=3, log2_table_size=12, init_scale=1.0)
    start, end = torch.tensor([[0.25, 0.5, 0.625]]), torch.tensor([[0.375, 0.625, 0.75]])  # one cell's corners
    along = torch.linspace(0, 1, 5)[:, None]
    values = grid(start + along * (end - start))
    # on a cell's diagonal trilinear interpolation is a cubic in the parameter; at its ends it is the vertex rows
    assert torch.allclose(values[0], grid(start)[0]) and torch.allclose(values[-1], grid(end)[0])
    stride = 9
    vertex = torch.tensor([2, 4, 5])
    row = (vertex[0] * stride + vertex[1]) * stride + vertex[2]
    assert torch.allclose(grid(start)[0], grid.table[row], atol=1e-6)


def test_quadratic_levels_have_slopes_continuous_across_cell_faces_where_trilinear_ones_jump():
    torch.manual_seed(0)
    trilinear = MultiResolutionGrid([8], features_per_level=2, log2_table_size=12, init_scale=1.0).double()
    quadratic = MultiResolutionGrid([8], features_per_level=2, log2_table_size=12, quadratic_levels=1).double()
    quadratic.load_state_dict(trilinear.state_dict())
    # across a cell face (x = 3/8) and across a cell centre (x = 7/16, where the spline's pieces meet)
    for crossing in (3 / 8, 7 / 16):
        below, above = torch.rand(100, 3, dtype=torch.float64) * 0.6 + 0.2, torch.zeros(100, 3, dtype=torch.float64)
        below[:, 0] = crossing - 1e-7
        above[:] = below
        above[:, 0] = crossing + 1e-7
        for grid, continuous in ((quadratic, True), (trilinear, crossing != 3 / 8)):
            slope_jump = (grid.forward_with_jacobian(above)[1] - grid.forward_with_jacobian(below)[1]).abs().max()
            assert (float(slope_jump) < 1e-4) == continuous, (crossing, continuous, float(slope_jump))


def test_quadratic_levels_reproduce_linear_features():
    """Features linear in the vertex index read back as the same linear function of the point inside the grid
    (the spline is a smoothing of the vertex values, not a shift of them)."""
    grid = MultiResolutionGrid([8], features_per_level=2, log2_table_size=12, quadratic_levels=1).double()
    with torch.no_grad():
        grid.table[:] = torch.stack([vertex_coordinates(8).double() @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.ones(9**3, dtype=torch.float64)], dim=-1)
    points = torch.rand(300, 3, dtype=torch.float64) * 0.75 + 0.125  # half a cell or more from the faces: no clamped vertex
    expected = (points * 8) @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert torch.allclose(grid(points)[:, 0], expected, atol=1e-10) and torch.allclose(grid(points)[:, 1], torch.ones(300, dtype=torch.float64))


def test_quadratic_levels_the_grid_cannot_hold_are_refused_in_one_sentence(monkeypatch):
    from nerfstudio.field_components import encodings

    from neurecon_ns.errors import UserInputError

    too_many = HashGridConfig(num_levels=4, min_resolution=8, max_resolution=64, log2_hashmap_size=13, quadratic_levels=3, implementation="torch")
    with pytest.raises(UserInputError, match="only its 2 coarsest levels densely: set it to at most 2"):
        ProgressiveHashEncoding(too_many)
    monkeypatch.setattr(encodings, "TCNN_EXISTS", True)  # as on a machine with tiny-cuda-nn
    with pytest.raises(UserInputError, match="implementation torch"):
        ProgressiveHashEncoding(HashGridConfig(quadratic_levels=1))


def test_progressive_levels_switch_features_on_coarse_to_fine():
    encoding = ProgressiveHashEncoding(
        HashGridConfig(num_levels=6, min_resolution=4, max_resolution=64, initial_levels=2, steps_per_level=10, implementation="torch")
    )
    points = torch.rand(64, 3) * 2 - 1
    features = encoding(points)[:, 3:].reshape(64, 6, 2)
    assert features[:, :2].abs().sum() > 0 and features[:, 2:].abs().sum() == 0
    encoding.update_to_step(25)  # 2 + 25 // 10 = 4 levels
    features = encoding(points)[:, 3:].reshape(64, 6, 2)
    assert features[:, :4].abs().sum() > 0 and features[:, 4:].abs().sum() == 0
    assert float(encoding.finest_active_cell()) == pytest.approx(2.0 / encoding.level_resolution(3))


@pytest.mark.parametrize("encoding", ["frequency", "hash"])
def test_numerical_gradient_matches_autograd(encoding):
    torch.manual_seed(0)
    geometry = GeometryNetworkConfig(
        encoding=encoding, num_layers=2, hidden_dim=32, skip_layers=(), feature_dim=8,
        hash_grid=HashGridConfig(num_levels=4, max_resolution=32, steps_per_level=0, implementation="torch"),
    )
    analytic = SurfaceFieldConfig(geometry=geometry).setup()
    numerical = SurfaceFieldConfig(geometry=geometry, gradient="numerical", numerical_gradient_step=1e-4).setup()
    numerical.load_state_dict(analytic.state_dict())
    points = torch.rand(200, 3) * 1.6 - 0.8
    level_a, features_a, gradient_a = analytic.get_level_value_and_gradient(points)
    level_n, features_n, gradient_n = numerical.get_level_value_and_gradient(points)
    assert torch.allclose(level_a, level_n, atol=1e-6) and torch.allclose(features_a, features_n, atol=1e-6)
    # central differences are exact up to O(h^2) curvature terms and float32 rounding
    assert (gradient_a - gradient_n).norm(dim=-1).max() < 2e-2 * gradient_a.norm(dim=-1).max()


def test_numerical_gradient_trains_the_parameters_without_a_second_derivative():
    field = SurfaceFieldConfig(
        geometry=GeometryNetworkConfig(num_layers=2, hidden_dim=16, skip_layers=(), feature_dim=4), gradient="numerical"
    ).setup()
    points = torch.rand(32, 3)
    _, _, gradient = field.get_level_value_and_gradient(points)
    ((gradient.norm(dim=-1) - 1) ** 2).mean().backward()
    assert all(p.grad is not None for p in field.geometry_network.parameters())


def sphere_grid(radius=0.5, resolution=32):
    grid = SurfaceOccupancyGrid(resolution=resolution, radius=1.0, margin=1.0)
    grid.update(lambda points: sphere_sdf(points, radius))
    return grid


def test_occupancy_grid_holds_every_surface_point_and_little_else():
    grid = sphere_grid()
    directions = torch.nn.functional.normalize(torch.randn(2000, 3), dim=-1)
    assert grid.lookup(0.5 * directions).all()
    # the shell of cells around a sphere of radius 0.5 is a small part of the cube
    shell_volume = 4 * math.pi * 0.5**2 * 4 * grid.cell_size
    assert grid.occupied_fraction() < 2 * shell_volume / 8.0
    assert not grid.lookup(torch.zeros(1, 3)).any() and not grid.lookup(torch.tensor([[0.9, 0.9, 0.9]])).any()


def test_occupancy_band_keeps_the_cells_where_the_density_is_not_yet_negligible():
    """Early in training NeuS's density is wide: cells 0.3 from the current surface stay occupied, so the
    surface can still move there; once the band is narrow they are skipped."""
    wide, narrow = SurfaceOccupancyGrid(32, 1.0, 1.0), SurfaceOccupancyGrid(32, 1.0, 1.0)
    wide.update(lambda points: sphere_sdf(points, 0.6), band=0.3)
    narrow.update(lambda points: sphere_sdf(points, 0.6), band=0.0)
    away = torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.0, 0.0]])  # 0.3 outside, 0.3 and 0.6 inside
    assert wide.lookup(away).tolist() == [True, True, False]
    assert not narrow.lookup(away).any()


@pytest.mark.parametrize("inv_s, expected_band", [(20.0, 0.336), (100.0, 0.0833), (500.0, 0.0199)])
def test_neus_occupancy_band_narrows_as_the_sharpness_grows(inv_s, expected_band):
    from nerfstudio.data.scene_box import SceneBox

    from neurecon_ns.models.neus import NeuSModelConfig

    config = NeuSModelConfig(occupancy_grid=True, occupancy_grid_resolution=48)
    config.networks.geometry.hidden_dim, config.networks.geometry.num_layers = 16, 1
    config.networks.geometry.skip_layers = ()
    model = config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1)
    with torch.no_grad():
        model.variance.variance.fill_(math.log(inv_s) / 10.0)
    assert math.isclose(model.occupancy_band(), expected_band, rel_tol=1e-2)


def test_ray_bounds_keep_the_hit_and_empty_rays_see_nothing():
    grid = sphere_grid()
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.3, 0.0, -3.0], [0.9, 0.9, -3.0]])
    directions = torch.tensor([[0.0, 0.0, 1.0]] * 3)
    nears, fars = torch.full((3, 1), 2.0), torch.full((3, 1), 4.0)
    new_nears, new_fars = grid.ray_bounds(origins, directions, nears, fars)
    first_hit = torch.tensor([3.0 - 0.5, 3.0 - math.sqrt(0.25 - 0.09)])
    exit_point = torch.tensor([3.0 + 0.5, 3.0 + math.sqrt(0.25 - 0.09)])
    assert (new_nears[:2, 0] <= first_hit).all() and (new_fars[:2, 0] >= exit_point).all()
    assert (new_fars[:2] - new_nears[:2] < fars[:2] - nears[:2]).all()  # something was skipped
    assert new_nears[2, 0] == new_fars[2, 0] == fars[2, 0]  # a ray through empty space keeps no segment


def vertex_coordinates(resolution: int) -> torch.Tensor:
    """`(i, j, k)` of every vertex of a dense level, in its table's row order: `[(R + 1)^3, 3]`."""
    axis = torch.arange(resolution + 1, dtype=torch.float32)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def test_second_difference_energy_is_zero_for_linear_features_and_exact_for_a_quadratic():
    grid = MultiResolutionGrid([4, 6, 30], features_per_level=2, log2_table_size=9)
    assert grid.num_dense == 2 and grid.hashed.tolist() == [False, False, True]
    with torch.no_grad():
        for level, resolution in enumerate((4, 6)):
            ijk = vertex_coordinates(resolution)
            rows = slice(int(grid.level_offsets[level]), int(grid.level_offsets[level] + grid.level_sizes[level]))
            grid.table[rows] = torch.stack([ijk @ torch.tensor([1.0, -2.0, 0.5]) + 3.0, 0.25 * ijk[:, 1]], dim=-1)
    assert float(grid.second_difference_energy(2).detach()) == pytest.approx(0.0, abs=1e-9)
    with torch.no_grad():  # level 1: both features i^2 + k^2: second difference 2 along i and along k, 0 along j
        ijk = vertex_coordinates(6)
        quadratic = (ijk[:, 0] ** 2 + ijk[:, 2] ** 2)[:, None].expand(-1, 2)
        grid.table[int(grid.level_offsets[1]) : int(grid.level_offsets[1] + grid.level_sizes[1])] = quadratic
    assert float(grid.second_difference_energy(2).detach()) == pytest.approx(2 * (2.0**2 * 2), rel=1e-6)
    assert float(grid.second_difference_energy(1).detach()) == pytest.approx(0.0, abs=1e-9)
    assert float(grid.second_difference_energy(3).detach()) == float(grid.second_difference_energy(2).detach())  # the hashed level is not read


def test_grid_smoothness_makes_a_levels_feature_slopes_continuous_across_its_cell_faces():
    """Minimising the second differences of a rough level takes away most of the jump of its features' slope at a
    cell face, and moves the features by less than their spread."""
    torch.manual_seed(0)
    grid = MultiResolutionGrid([8], features_per_level=2, log2_table_size=12, init_scale=1.0)
    face = 0.5  # a face of the 8-cell level along x
    below, above = torch.rand(200, 3), torch.rand(200, 3)
    below[:, 0], above[:, 0] = face - 1e-3, face + 1e-3
    above[:, 1:] = below[:, 1:]

    def slope_jump():
        _, jacobian_below = grid.forward_with_jacobian(below)
        _, jacobian_above = grid.forward_with_jacobian(above)
        return (jacobian_above[..., 0] - jacobian_below[..., 0]).abs().mean()

    with torch.no_grad():
        jump_before, table_before = float(slope_jump()), grid.table.detach().clone()
    optimizer = torch.optim.Adam(grid.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        grid.second_difference_energy(1).backward()
        optimizer.step()
    with torch.no_grad():
        jump_after = float(slope_jump())
    assert jump_after < 0.2 * jump_before, (jump_before, jump_after)
    assert (grid.table.detach() - table_before).abs().mean() < table_before.std()


def test_training_with_the_grid_smoothness_term(small_scene, tmp_path):
    """neus-fast at its CPU size with the term on: it is in the losses with its weight, and its gradient reaches the
    coarse levels' rows only."""
    from neurecon_ns.training import method_config, run_iteration, setup_trainer, small_cpu_config

    config = small_cpu_config(method_config("neus-fast"), small_scene.output_dir, tmp_path, 40, rays_per_batch=64)
    config.pipeline.model.grid_smoothness_loss_weight = 0.5
    config.pipeline.model.grid_smoothness_levels = 2
    torch.manual_seed(0)
    trainer = setup_trainer(config)
    model = trainer.pipeline.model
    for step in range(3):
        run_iteration(trainer, step)
    grid = model.field.geometry_network.encoding.grids
    ray_bundle, batch = trainer.pipeline.datamanager.next_train(3)
    loss = model.get_loss_dict(model(ray_bundle), batch)["grid_smoothness_loss"]
    assert float(loss.detach()) == pytest.approx(0.5 * float(grid.second_difference_energy(2).detach()), rel=1e-6)
    assert loss > 0
    grid.table.grad = None
    loss.backward()
    coarse_rows = int(grid.level_offsets[2])
    assert grid.table.grad[:coarse_rows].abs().sum() > 0 and grid.table.grad[coarse_rows:].abs().sum() == 0


@pytest.mark.parametrize("method, fix", [("neus-dtu", "set the weight to 0"), ("neus-fast", "implementation torch")])
def test_grid_smoothness_without_the_torch_grid_is_refused_in_one_sentence(method, fix, small_scene, tmp_path, monkeypatch):
    from neurecon_ns.errors import UserInputError
    from neurecon_ns.fields import hash_encoding
    from neurecon_ns.training import method_config, setup_trainer, small_cpu_config

    config = small_cpu_config(method_config(method), small_scene.output_dir, tmp_path, 10, rays_per_batch=32)
    config.pipeline.model.grid_smoothness_loss_weight = 0.1
    if method == "neus-fast":  # as on a machine with tiny-cuda-nn
        monkeypatch.setattr(hash_encoding.ProgressiveHashEncoding, "backend", property(lambda self: "tcnn"))
    with pytest.raises(UserInputError, match=fix):
        setup_trainer(config)


def test_second_difference_energy_has_the_gradient_of_its_sum():
    torch.manual_seed(0)
    grid = MultiResolutionGrid([3, 4, 30], features_per_level=2, log2_table_size=8, init_scale=1.0).double()
    assert grid.num_dense == 2
    assert torch.autograd.gradcheck(lambda table: SecondDifferenceEnergy.apply(table, (4, 5), (0, 64)), (grid.table.detach().clone().requires_grad_(),))
