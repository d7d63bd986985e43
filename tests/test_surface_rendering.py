"""Surface rendering mode: sphere tracing and root finding on analytic spheres, every method's surface
outputs through its model, the viewer's render-mode dropdown, and ns-render of a UNISURF run in surface mode."""

import copy
import shutil

import pytest
import torch
import yaml
from helpers import ns_render_interpolate, train_tiny
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.viewer.utils import parse_object
from nerfstudio.viewer.viewer_elements import ViewerDropdown
from torch import nn

from neurecon_ns.errors import UserInputError
from neurecon_ns.model_components.root_finding import sphere_trace
from neurecon_ns.training import method_config

CENTER = torch.tensor([0.05, 0.1, -0.1])
RADIUS = 0.5
COLOR = torch.tensor([0.2, 0.6, 0.9])


def rays(num_rays: int = 300, seed: int = 0):
    """Rays from a distance of 2.5 aimed at points scattered around the sphere, with unit directions."""
    generator = torch.Generator().manual_seed(seed)
    origins = torch.nn.functional.normalize(torch.randn(num_rays, 3, generator=generator), dim=-1) * 2.5
    targets = CENTER + 0.7 * (torch.rand(num_rays, 3, generator=generator) - 0.5) * 2
    directions = torch.nn.functional.normalize(targets - origins, dim=-1)
    return origins, directions


def exact_entry(origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    offset = origins - CENTER
    b = (offset * directions).sum(-1)
    return -b - torch.sqrt(b**2 - ((offset**2).sum(-1) - RADIUS**2))


class AnalyticSphereField(nn.Module):
    """The interface of `SurfaceField` for a sphere: level `scale * (|x - c| - r)`, uniform colour.

    `scale = 1` is an SDF; another scale is a level set that is not a distance (like UNISURF's)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.dummy = nn.Parameter(torch.zeros(1))

    def update_to_step(self, step: int) -> None:
        pass

    def get_level_value(self, points):
        return (self.scale * ((points - CENTER).norm(dim=-1) - RADIUS))[..., None]

    def forward_geonetwork(self, points):
        return torch.cat([self.get_level_value(points), torch.zeros_like(points)], dim=-1)

    def get_level_value_and_gradient(self, points, create_graph=None):
        gradient = self.scale * torch.nn.functional.normalize(points - CENTER, dim=-1)
        return self.get_level_value(points), torch.zeros_like(points), gradient

    def get_colors(self, points, directions, gradients, features):
        return COLOR.expand(points.shape)

    def forward(self, points, directions):
        level, features, gradient = self.get_level_value_and_gradient(points)
        return {"level": level, "gradient": gradient, "rgb": self.get_colors(points, directions, gradient, features)}


def small_model(method: str, **model_overrides):
    config = method_config(method).pipeline.model
    for name, value in model_overrides.items():
        setattr(config, name, value)
    config.networks.geometry.hidden_dim = 32
    config.networks.geometry.num_layers = 2
    config.networks.geometry.skip_layers = ()
    config.networks.geometry.feature_dim = 16
    config.networks.radiance.hidden_dim = 32
    config.networks.radiance.num_layers = 1
    return config.setup(scene_box=None, num_train_data=4)


def test_sphere_tracing_hits_an_analytic_sphere_at_its_depth():
    origins, directions = rays()
    t_exact = exact_entry(origins, directions)
    should_hit = ~torch.isnan(t_exact)
    nears, fars = torch.zeros(300, 1), torch.full((300, 1), 5.0)

    def sdf(points):
        return (points - CENTER).norm(dim=-1) - RADIUS

    t, converged = sphere_trace(sdf, origins, directions, nears, fars, num_steps=100, tolerance=1e-5)
    # rays that graze the sphere take many tiny steps; all others converge
    grazing = should_hit & (exact_entry(origins, directions) - (-(origins - CENTER) * directions).sum(-1)).abs().lt(0.05)
    assert bool(converged[should_hit & ~grazing, 0].all())
    assert not bool(converged[~should_hit, 0].any())
    assert bool((t[~should_hit, 0] > 5.0).all()), "missing rays walk past far"
    assert (t[converged[:, 0], 0] - t_exact[converged[:, 0]]).abs().max() < 1e-4


@pytest.mark.parametrize(
    "method, level_scale",
    [("neus-dtu", 1.0), ("volsdf-dtu", 1.0), ("unisurf-dtu", 1.0), ("unisurf-dtu", 25.0)],
)
def test_surface_mode_places_the_hit_at_the_true_depth(method, level_scale):
    """Each method's surface mode on an analytic sphere: depth, hit mask, normal and colour.

    UNISURF's level set is no distance (scale 25 here): its root search must not care."""
    model = small_model(method)
    model.field = AnalyticSphereField(scale=level_scale)
    model.eval()
    model.render_mode = "surface"
    origins, directions = rays(seed=1)
    bundle = RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(300, 1))
    with torch.no_grad():
        outputs = model(bundle)
    t_exact = exact_entry(origins, directions)
    should_hit = ~torch.isnan(t_exact)
    hit = outputs["accumulation"][:, 0] > 0.5
    # a ray within a search step of grazing may be missed by the root search; nothing else
    chord = 2 * torch.sqrt((RADIUS**2 - ((origins - CENTER) ** 2).sum(-1) + ((origins - CENTER) * directions).sum(-1) ** 2).clamp(min=0))
    assert not bool((hit & ~should_hit).any())
    assert bool(hit[should_hit & (chord > 0.05)].all())
    assert (outputs["depth"][hit, 0] - t_exact[hit]).abs().max() < 1e-3
    points = origins[hit] + t_exact[hit, None] * directions[hit]
    expected_normal = torch.nn.functional.normalize(points - CENTER, dim=-1)
    assert torch.allclose(outputs["normal"][hit] * 2 - 1, expected_normal, atol=1e-2)
    assert torch.allclose(outputs["rgb"][hit], COLOR.expand(int(hit.sum()), 3))
    assert torch.equal(outputs["normal"][~hit], torch.full_like(outputs["normal"][~hit], 0.5))


def test_surface_and_volume_modes_agree_on_a_sharp_sphere():
    """UNISURF volume rendering with a nearly binary occupancy puts the depth where surface rendering does."""
    model = small_model("unisurf-dtu")
    model.field = AnalyticSphereField(scale=1.0)
    model.config.logit_scale = 300.0
    model.update_to_step(10**6)  # the narrowest interval
    model.eval()
    origins, directions = rays(seed=2)
    bundle = RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(300, 1))
    with torch.no_grad():
        model.render_mode = "volume"
        volume = model(bundle)
        model.render_mode = "surface"
        surface = model(bundle)
    hit = surface["accumulation"][:, 0] > 0.5
    assert bool((volume["accumulation"][hit] > 0.99).all())
    assert (volume["depth"][hit] - surface["depth"][hit]).abs().median() < 0.01


def test_the_viewer_finds_a_render_mode_dropdown_that_switches_the_mode():
    model = small_model("neus-dtu")
    elements = parse_object(model, ViewerDropdown, "Custom Elements")
    dropdowns = [element for _, element in elements if element.name == "Render mode"]
    assert len(dropdowns) == 1
    dropdown = dropdowns[0]
    assert dropdown.options == ["volume", "surface"] and dropdown.value == "volume"
    model.field = AnalyticSphereField()
    model.eval()
    origins, directions = rays(num_rays=20, seed=3)
    bundle = RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(20, 1))
    dropdown.value = "surface"  # what the GUI does before it calls the hook
    dropdown.cb_hook(dropdown)
    assert model.render_mode == "surface"
    with torch.no_grad():
        outputs = model(bundle)
    assert set(outputs) == {"rgb", "accumulation", "depth", "normal"}, "surface outputs: no samples were composited"
    # training always volume-renders, whatever the viewer shows
    model.train()
    assert "weights" in model.get_outputs(model.collider(bundle))


def test_render_control_does_not_change_checkpoints_or_copies():
    """nerfstudio saves and loads state dicts (the weight-normalised networks cannot be pickled whole)."""
    model = small_model("volsdf-dtu")
    keys = set(model.state_dict())
    assert not any("render" in key for key in keys)
    clone = copy.deepcopy(model)
    assert set(clone.state_dict()) == keys
    clone.load_state_dict(model.state_dict())
    assert clone.render_mode == "volume"
    surface_model = small_model("volsdf-dtu", render_mode="surface")
    assert surface_model.render_mode == "surface"
    surface_model.load_state_dict(model.state_dict())


def test_a_misspelt_render_mode_in_the_config_is_one_sentence():
    config = method_config("unisurf-dtu").pipeline.model
    config.render_mode = "surfaces"
    with pytest.raises(UserInputError, match="render_mode 'surfaces'.*config.yml.*volume, surface"):
        config.setup(scene_box=None, num_train_data=4)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ns-render needs an ffmpeg binary on PATH (apt-get install ffmpeg)")
def test_ns_render_of_a_unisurf_run_in_surface_mode(small_scene, tmp_path):
    """`ns-train unisurf-dtu`, then ns-render with `render_mode: surface` set in the run's config.yml."""
    config_path = train_tiny("unisurf-dtu", small_scene.output_dir, tmp_path, steps=2)
    text = config_path.read_text()
    assert text.count("render_mode: volume") == 1
    config_path.write_text(text.replace("render_mode: volume", "render_mode: surface"))
    assert yaml.load(config_path.read_text(), Loader=yaml.Loader).pipeline.model.render_mode == "surface"
    output = tmp_path / "render"
    result = ns_render_interpolate(config_path, output, ["rgb", "normal", "depth"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(output.glob("*")), "ns-render wrote nothing"
