"""What NeuS, VolSDF and UNISURF share: a level-set field rendered by alpha compositing.

A paper's model subclasses `SurfaceModel` and provides three things: its sampler
(`sample_along_rays`), how a section's opacity follows from the field (`get_alphas`), and any
paper-specific losses or schedules. Everything else lives here once: the ray bounds of the
unit sphere, the field evaluation, compositing of colour, depth, normals and the background,
the colour, eikonal, curvature and mask losses, image metrics, and nerfstudio's camera optimiser.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Literal, Optional, Tuple, Type, Union

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from nerfstudio.cameras.camera_optimizers import CameraOptimizer, CameraOptimizerConfig
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.model_components.renderers import DepthRenderer
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps
from nerfstudio.viewer.viewer_elements import ViewerDropdown
from torch import Tensor
from torch.nn import Parameter

from neurecon_ns.data.pixel_sampler import ErrorWeightedPixelSampler
from neurecon_ns.errors import UserInputError
from neurecon_ns.fields.background import BackgroundFieldConfig
from neurecon_ns.fields.hash_encoding import ProgressiveHashEncoding
from neurecon_ns.fields.sdf_field import SurfaceFieldConfig
from neurecon_ns.model_components.background import (
    background_alphas,
    composite_behind,
    sample_background,
    weights_from_alphas,
)
from neurecon_ns.model_components.colliders import SphereChordCollider, UnitSphereCollider
from neurecon_ns.model_components.occupancy_grid import SurfaceOccupancyGrid
from neurecon_ns.model_components.root_finding import find_first_root, sphere_trace
from neurecon_ns.utils.accelerator import at_least_float32, full_precision

RENDER_MODES = ("volume", "surface")
"""What `render_mode` may be."""


def mask_cross_entropy(accumulation: Float[Tensor, "*bs 1"], fg_mask: Float[Tensor, "*bs 1"]) -> Float[Tensor, ""]:
    """Binary cross-entropy between a ray's opacity (clamped to [1e-3, 1 - 1e-3]) and its mask, in float32.

    The opacity is a probability, not a logit, so the logits form does not apply; CUDA's autocast refuses
    `binary_cross_entropy` (half precision loses `log(1 - p)` near p = 1), hence autocast off around it.
    """
    with full_precision(accumulation.device.type):
        opacity = at_least_float32(accumulation).clamp(1e-3, 1.0 - 1e-3)
        return F.binary_cross_entropy(opacity, fg_mask.to(opacity.dtype))


def ray_errors(
    rgb: Float[Tensor, "num_rays 3"],
    gt_rgb: Float[Tensor, "num_rays 3"],
    accumulation: Float[Tensor, "num_rays 1"],
    fg_mask: Optional[Float[Tensor, "num_rays 1"]],
) -> Float[Tensor, " num_rays"]:
    """How wrong each ray of a batch is, for the error-weighted pixel sampler: the mean absolute colour error (on
    the object only, with a mask) plus, with a mask, how far the opacity is from it; between 0 and 2."""
    color_error = (rgb - gt_rgb).abs().mean(dim=-1)
    if fg_mask is None:
        return color_error
    return color_error * fg_mask[:, 0] + (accumulation[:, 0].to(fg_mask.dtype) - fg_mask[:, 0]).abs()


def curvature_loss_weight_at(
    step: int,
    weight: float,
    warmup_steps: int,
    difference_step: Union[float, Tensor],
    initial_difference_step: float,
    follow_levels: bool,
) -> Union[float, Tensor]:
    """The curvature loss's weight at a training step:

        w(t) = w * min(1, t / T_warm) * (h(t) / h(0) if follow_levels else 1)

    a linear warm-up from 0 over `T_warm` steps, then, as hash levels switch on and the central differences'
    step `h` shrinks to the finest active cell, a weight that shrinks with it: each new level divides it by the
    grid's growth factor, so that the finer levels may add the detail the coarse ones cannot hold. `h` may be a
    tensor on the device (the weight then is one too; nothing is read on the host).
    """
    ramp = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    if not follow_levels:
        return weight * ramp
    return weight * ramp * difference_step / initial_difference_step


def mean_absolute_laplacian(laplacian: Float[Tensor, "num_points 1"], weights: Float[Tensor, " num_points"]) -> Float[Tensor, ""]:
    """Neuralangelo's curvature loss: the mean of `|Laplacian f|` over the points, each counted with its weight
    (1 or 0 to mark the points read, or a rendering weight)."""
    return (laplacian[..., 0].abs() * weights).sum() / (weights.sum() + 1e-5)


@dataclass
class SurfaceModelConfig(ModelConfig):
    """Settings every surface model has; each method's defaults are set in `neurecon_ns/methods.py`."""

    _target: Type = field(default_factory=lambda: SurfaceModel)
    networks: SurfaceFieldConfig = field(default_factory=SurfaceFieldConfig)
    """Geometry and radiance networks."""
    sdf_field: bool = True
    """The field's level-set function is negative inside and zero on the surface (nerfstudio's
    `ns-export marching-cubes` reads this flag and `field.forward_geonetwork(x)[:, 0]`)."""
    sphere_radius: float = 1.0
    """Radius of the region of interest in the training space (the data parser maps it to 1)."""
    near_plane: float = 0.0
    """Rays start at least this far from the camera."""
    background_color: Literal["black", "white", "random"] = "black"
    """Colour behind the surface where nothing is hit ("random" only while training), without a background model."""
    background_model: Literal["none", "nerfpp"] = "none"
    """What lies beyond the sphere: "none", the constant `background_color` (object captures with masks or a
    plain backdrop); "nerfpp", NeRF++'s inverted-sphere network, composited behind the surface (captures
    without masks). With "nerfpp" the foreground rays end on the sphere's far side."""
    background_network: BackgroundFieldConfig = field(default_factory=BackgroundFieldConfig)
    """The NeRF++ background network (used when `background_model` is "nerfpp")."""
    num_background_samples: int = 32
    """Samples per ray beyond the sphere, uniform in inverse distance, the last one at infinity (NeuS: 32)."""
    eikonal_loss_weight: float = 0.1
    """Weight of the eikonal regulariser `(|grad f| - 1)^2` (IGR)."""
    mask_loss_weight: float = 0.0
    """Weight of the binary cross-entropy between accumulated opacity and the foreground mask (0 disables it)."""
    color_loss_outside_mask: bool = False
    """With a mask loss, also compare the colour of the rays outside the mask, with the background the model
    renders there as their target. NeuS compares colours inside the mask only: a ray on the object that the
    surface's shell covers by half renders too dark and pays for it, while a ray beside the object that the shell
    covers by half pays nothing, so the colour loss pulls silhouettes (and the faces joined to them) outward by
    about the shell's width `1/s`. With this on, both cost `|c - b|` per unit of misplaced opacity."""
    eikonal_radius: float = 1.2
    """Samples farther than this from the origin are left out of the eikonal loss."""
    num_eikonal_uniform_points: int = 0
    """Points drawn uniformly in the ball of `sphere_radius` per batch, added to the eikonal loss (VolSDF)."""
    curvature_loss_weight: float = 0.0
    """Weight of the curvature regulariser `mean |Laplacian f|` over the ray samples within `eikonal_radius`
    (Neuralangelo), at the end of its warm-up; 0 disables it. The Laplacian comes from second differences at the
    numerical gradient's step (`networks.gradient`: free with "numerical"; with "analytic", seven level queries
    per sample, the point and its six neighbours in float32)."""
    curvature_points: Literal["ray_samples", "surface"] = "ray_samples"
    """Where the curvature loss reads the Laplacian. "ray_samples": every sample of the rays (`curvature_num_rays`
    of them with the analytic gradient), as Neuralangelo does. "surface": on every ray of the batch its
    `curvature_surface_samples` samples of highest rendering weight, each counted with that weight: the Laplacian
    where the rendered surface lies, which on a level set with `|grad f| = 1` is twice its mean curvature, at
    `7 * curvature_surface_samples` level queries per ray with the analytic gradient."""
    curvature_num_rays: int = 0
    """With the analytic gradient and "ray_samples", the curvature loss reads the samples of this many rays of each
    batch (the first ones; rays are drawn at random), at seven level queries per sample; 0: every ray. With
    numerical gradients every sample has its Laplacian at no extra cost, and all are read."""
    curvature_surface_samples: int = 2
    """Samples per ray the "surface" curvature points take (those of highest rendering weight)."""
    curvature_warmup_steps: int = 500
    """Steps over which the curvature weight grows linearly from 0 to `curvature_loss_weight`."""
    curvature_end_step: int = 0
    """From this training step on the curvature loss is off (and its Laplacians are not queried), so that the last
    steps may add back the detail it smoothed; 0 keeps it on to the end."""
    curvature_follows_levels: bool = True
    """Scale the curvature weight by `h / h_0`, the central differences' step (the finest active hash level's
    cell) against its value at the start: each level that switches on divides the weight by the grid's growth
    factor. Without a hash grid `h` is constant and this changes nothing."""
    grid_smoothness_loss_weight: float = 0.0
    """Weight of the grid smoothness term: the squared second differences of the features at the vertices of the
    hash grid's `grid_smoothness_levels` coarsest levels, summed over the axes, a mean per level
    (`MultiResolutionGrid.second_difference_energy`); 0 disables it. Trilinear interpolation turns a level's
    second differences into jumps of the features' slope at its cell faces. On the real scan it lowers the
    surface noise (docs/benchmarks.md, "Real scan"). Torch grid only."""
    grid_smoothness_levels: int = 4
    """How many of the grid's coarsest levels the smoothness term reads (densely indexed levels only)."""
    camera_optimizer: CameraOptimizerConfig = field(default_factory=lambda: CameraOptimizerConfig(mode="off"))
    """nerfstudio's camera pose refinement (off by default)."""
    occupancy_grid: bool = False
    """Empty-space skipping: shrink each ray's segment to the cells of a coarse grid the SDF's zero set may
    pass through (SDF methods whose rays end at the object's sphere)."""
    occupancy_grid_resolution: int = 64
    """Cells per axis of that grid over the object's sphere's bounding cube."""
    occupancy_grid_margin: float = 1.5
    """A cell is occupied when |SDF| at its centre is at most this many half diagonals."""
    occupancy_grid_update_every: int = 16
    """Training steps between two refreshes of the grid from the SDF."""
    render_mode: Literal["volume", "surface"] = "volume"
    """Rendering outside training (viewer, ns-render, evaluation): "volume" composites samples as in
    training; "surface" shades only the first surface point of each ray (sphere tracing for SDFs,
    root finding for UNISURF). The viewer switches it with its "Render mode" dropdown; for ns-render,
    edit `render_mode` in the run's config.yml."""
    sphere_tracing_steps: int = 64
    """Surface mode: sphere-tracing steps before an unresolved ray falls back to the root search."""
    surface_tolerance: float = 1e-4
    """Surface mode: sphere tracing stops where |SDF| is below this."""
    root_search_steps: int = 256
    """Surface mode, SDF methods: evenly spaced steps of the root search along the rays sphere tracing leaves
    unresolved (UNISURF searches with its sampler's settings)."""
    root_secant_steps: int = 8
    """Surface mode, SDF methods: secant refinements of that root search."""


class SurfaceModel(Model):
    """Base class of the level-set models; subclasses implement `sample_along_rays` and `get_alphas`."""

    config: SurfaceModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        self.field = self.config.networks.setup()
        self.training_step = 0  # the step `update_to_step` was last called with
        # where each training batch's per-ray errors go (`ErrorWeightedPixelSampler.record_errors`), when its sampler wants them
        self.record_ray_errors: Optional[Callable[[Tensor, Tensor], None]] = None
        # h(0) of the curvature weight's schedule: the field is built with the initial levels active
        self.initial_difference_step = float(self.field.numerical_gradient_step())
        self.collider = UnitSphereCollider(radius=self.config.sphere_radius, near_plane=self.config.near_plane)
        if self.config.background_model == "nerfpp":
            self.background_field = self.config.background_network.setup()
            # the chord ends exactly where the background starts, so compositing one behind the other is exact
            self.collider = SphereChordCollider(radius=self.config.sphere_radius, near_plane=self.config.near_plane)
        self.camera_optimizer: CameraOptimizer = self.config.camera_optimizer.setup(
            num_cameras=self.num_train_data, device="cpu"
        )
        self.renderer_depth = DepthRenderer(method="expected")
        self.occupancy_grid: Optional[SurfaceOccupancyGrid] = None
        if self.config.occupancy_grid:
            self.occupancy_grid = SurfaceOccupancyGrid(
                self.config.occupancy_grid_resolution, self.config.sphere_radius, self.config.occupancy_grid_margin
            )
        if self.config.grid_smoothness_loss_weight > 0:
            self._check_grid_smoothness_applies()
        self._lpips = None  # built lazily: torchmetrics downloads its weights when constructed
        self._lpips_unavailable = False
        if self.config.render_mode not in RENDER_MODES:
            raise UserInputError(
                f"render_mode '{self.config.render_mode}' (pipeline.model.render_mode in the run's config.yml) is "
                f"not one of {', '.join(RENDER_MODES)}; set it to one of them."
            )
        self.render_mode: str = self.config.render_mode
        # the viewer shows every ViewerElement of the model as a control; a dropdown is no module,
        # so checkpoints and DDP see nothing of it
        self.render_mode_control = ViewerDropdown(
            "Render mode",
            self.config.render_mode,
            list(RENDER_MODES),
            cb_hook=self._on_render_mode_control,
            hint="volume: composite samples as in training; surface: shade the first surface point of each ray",
        )
        from neurecon_ns.render.viewer_mesh import MeshPreviewButton

        self.mesh_preview_button = MeshPreviewButton(self)  # "Preview mesh": the current surface in the 3D scene

    def _check_grid_smoothness_applies(self) -> None:
        network = self.field.geometry_network
        encoding = getattr(network, "encoding", None)
        if not isinstance(encoding, ProgressiveHashEncoding) or encoding.backend != "torch":
            raise UserInputError(
                "grid_smoothness_loss_weight (pipeline.model.grid-smoothness-loss-weight) reads the torch hash grid's "
                "tables, and this model's geometry network has "
                + ("tiny-cuda-nn's grid: add --pipeline.model.networks.geometry.hash-grid.implementation torch"
                   if isinstance(encoding, ProgressiveHashEncoding) else "no hash grid: set the weight to 0")
                + "."
            )

    def _on_render_mode_control(self, control: ViewerDropdown) -> None:
        self.render_mode = control.value

    # -- what a paper provides ---------------------------------------------------------------

    def sample_along_rays(self, ray_bundle: RayBundle) -> RaySamples:
        """Sections along the rays where the field is evaluated (the paper's sampler)."""
        raise NotImplementedError

    def get_alphas(self, ray_samples: RaySamples, field_outputs: Dict[str, Tensor]) -> Float[Tensor, "*bs num_samples 1"]:
        """Opacity of each section from the field (the paper's level-set-to-opacity mapping)."""
        raise NotImplementedError

    def level_set(self, points: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs"]:
        """Signed level-set function in the training space: negative inside, zero on the surface."""
        return self.field.get_level_value(points)[..., 0]

    # -- shared machinery --------------------------------------------------------------------

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        param_groups = {"fields": list(self.field.parameters()) + self.extra_field_parameters()}
        if self.config.background_model == "nerfpp":
            param_groups["fields"] += list(self.background_field.parameters())
        self.camera_optimizer.get_param_groups(param_groups=param_groups)
        return param_groups

    def update_to_step(self, step: int) -> None:
        """Everything that follows the training step (called before each iteration); papers extend it."""
        self.training_step = step
        self.field.update_to_step(step)
        if self.occupancy_grid is not None and step % self.config.occupancy_grid_update_every == 0:
            self.occupancy_grid.update(self.level_set, band=self.occupancy_band())

    def occupancy_band(self) -> float:
        """How far from the zero level set (SDF units) the model's density is not yet negligible; the
        occupancy grid keeps the cells within it. Papers whose density has a learned width override it."""
        return 0.0

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        pipeline = getattr(training_callback_attributes, "pipeline", None)
        sampler = getattr(getattr(pipeline, "datamanager", None), "train_pixel_sampler", None)
        if isinstance(sampler, ErrorWeightedPixelSampler) and sampler.active:
            self.record_ray_errors = sampler.record_errors
        return [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=self.update_to_step,
            )
        ]

    def extra_field_parameters(self) -> List[Parameter]:
        """Parameters of a paper's own modules (e.g. NeuS's variance) trained with the field."""
        return []

    def background_rgb(self, ray_bundle: RayBundle) -> Float[Tensor, "num_rays 3"]:
        """Colour seen through the region of interest: the background network's, or a constant colour."""
        if self.config.background_model == "nerfpp":
            return self.render_background(ray_bundle)
        color = self.config.background_color
        num_rays = ray_bundle.origins.shape[0]
        if color == "random" and self.training:
            return torch.rand(num_rays, 3, device=ray_bundle.origins.device)
        value = 1.0 if color == "white" else 0.0
        return torch.full((num_rays, 3), value, device=ray_bundle.origins.device)

    def render_background(self, ray_bundle: RayBundle) -> Float[Tensor, "num_rays 3"]:
        """NeRF++: the background network composited over samples from the sphere's far side to infinity."""
        samples = sample_background(
            ray_bundle, self.config.sphere_radius, self.config.num_background_samples, jitter=self.training
        )
        background = self.background_field(samples.coordinates, samples.directions)
        weights = weights_from_alphas(background_alphas(background["density"], samples.lengths))
        return (weights * background["rgb"]).sum(dim=-2)

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        if not self.training and self.render_mode == "surface":
            return self.get_surface_outputs(ray_bundle)
        if self.training:
            self.camera_optimizer.apply_to_raybundle(ray_bundle)
        if self.occupancy_grid is not None:
            ray_bundle.nears, ray_bundle.fars = self.occupancy_grid.ray_bounds(
                ray_bundle.origins, ray_bundle.directions, ray_bundle.nears, ray_bundle.fars
            )
        ray_samples = self.sample_along_rays(ray_bundle)
        points = ray_samples.frustums.get_positions()
        directions = ray_samples.frustums.directions
        laplacian_rays = self.curvature_rays(points.shape[0])
        # the field is asked for Laplacians only when the loss reads them (any field answers `field(points, directions)`)
        curvature_args = {"laplacian_rows": laplacian_rays} if laplacian_rays > 0 else {}
        field_outputs = self.field(points, directions, **curvature_args)
        alphas = self.get_alphas(ray_samples, field_outputs)
        if self.config.background_model != "none":
            # beyond the sphere the background network holds the scene (as in NeuS's renderer): a ray that
            # misses the sphere, or a section past its far side, has no surface opacity
            alphas = alphas * (points.norm(dim=-1, keepdim=True) < self.config.sphere_radius)
        weights = ray_samples.get_weights_and_transmittance_from_alphas(alphas, weights_only=True)

        accumulation = weights.sum(dim=-2)
        background_rgb = self.background_rgb(ray_bundle)
        rgb = composite_behind((weights * field_outputs["rgb"]).sum(dim=-2), accumulation, background_rgb)
        normals = F.normalize(field_outputs["gradient"], dim=-1)
        normal = (weights * normals).sum(dim=-2)
        outputs: Dict[str, Tensor] = {
            "rgb": rgb,
            "accumulation": accumulation,
            "depth": self.renderer_depth(weights=weights, ray_samples=ray_samples),
            "normal": (normal + 1.0) / 2.0,  # world-space normal shown as a colour in [0, 1]
        }
        if self.config.background_model != "none" or self.training:
            outputs["background_rgb"] = background_rgb
        if self.training:
            outputs["gradients"] = field_outputs["gradient"].reshape(-1, 3)
            outputs["eikonal_points"] = points.reshape(-1, 3)
            outputs["weights"] = weights
            if self.curvature_active():
                outputs.update(self.curvature_samples(points, weights, field_outputs, laplacian_rays))
            if self.config.num_eikonal_uniform_points > 0:
                uniform_points = self.uniform_points_in_sphere(self.config.num_eikonal_uniform_points)
                _, _, uniform_gradients = self.field.get_level_value_and_gradient(uniform_points)
                outputs["gradients"] = torch.cat([outputs["gradients"], uniform_gradients])
                outputs["eikonal_points"] = torch.cat([outputs["eikonal_points"], uniform_points])
        outputs.update(self.extra_outputs(ray_bundle, ray_samples, field_outputs, weights))
        return outputs

    def curvature_active(self) -> bool:
        """Whether this pass feeds the curvature loss (training, with a weight above 0, before its end step)."""
        config = self.config
        ended = 0 < config.curvature_end_step <= self.training_step
        return self.training and config.curvature_loss_weight > 0 and not ended

    def curvature_rays(self, num_rays: int) -> int:
        """How many of the batch's rays the field gives Laplacians for in the rendering pass (0 outside training,
        with the loss off, or where the "surface" points are queried after the weights)."""
        config = self.config
        if not self.curvature_active():
            return 0
        if config.networks.gradient == "numerical":
            return num_rays  # free from the gradient's own seven values
        if config.curvature_points == "surface":
            return 0
        return num_rays if config.curvature_num_rays <= 0 else min(config.curvature_num_rays, num_rays)

    def curvature_samples(
        self,
        points: Float[Tensor, "num_rays num_samples 3"],
        weights: Float[Tensor, "num_rays num_samples 1"],
        field_outputs: Dict[str, Tensor],
        laplacian_rays: int,
    ) -> Dict[str, Tensor]:
        """The points the curvature loss reads (`curvature_points`), their Laplacians and the weight each counts
        with (see the config's `curvature_points`)."""
        if self.config.curvature_points == "ray_samples":
            laplacians = field_outputs["laplacian"].reshape(-1, 1)
            chosen = points[:laplacian_rays].reshape(-1, 3)  # the first rays' samples
            return {"laplacians": laplacians, "curvature_points": chosen, "curvature_weights": torch.ones_like(laplacians[:, 0])}
        num_chosen = min(self.config.curvature_surface_samples, weights.shape[-2])
        chosen_weights, chosen_index = weights.detach()[..., 0].topk(num_chosen, dim=-1)
        chosen = torch.gather(points.detach(), -2, chosen_index[..., None].expand(-1, -1, 3)).reshape(-1, 3)
        if laplacian_rays > 0:  # numerical gradients: every sample's Laplacian is at hand
            laplacians = torch.gather(field_outputs["laplacian"].reshape(weights.shape), -2, chosen_index[..., None])
        else:
            laplacians = self.field.get_laplacian(chosen)
        return {
            "laplacians": laplacians.reshape(-1, 1),
            "curvature_points": chosen,
            "curvature_weights": chosen_weights.reshape(-1).to(torch.float32),
        }

    def extra_outputs(
        self, ray_bundle: RayBundle, ray_samples: RaySamples, field_outputs: Dict[str, Tensor], weights: Tensor
    ) -> Dict[str, Tensor]:
        """Per-ray outputs a paper adds (they appear in the viewer and in `ns-render`)."""
        return {}

    # -- surface rendering -----------------------------------------------------------------------

    def find_surface(self, ray_bundle: RayBundle) -> Tuple[Float[Tensor, "num_rays 1"], Bool[Tensor, "num_rays 1"]]:
        """First surface point along each ray, `(t, hit)`: sphere tracing of the SDF, and the dense
        root search for the rays it leaves unresolved (neither converged nor past `far`)."""
        config = self.config
        origins, directions = ray_bundle.origins, ray_bundle.directions
        nears, fars = ray_bundle.nears, ray_bundle.fars
        assert nears is not None and fars is not None
        t, hit = sphere_trace(
            self.level_set, origins, directions, nears, fars, config.sphere_tracing_steps, config.surface_tolerance
        )
        unresolved = (~hit & (t <= fars))[:, 0]
        if unresolved.any():
            t[unresolved], hit[unresolved] = find_first_root(
                self.level_set,
                origins[unresolved],
                directions[unresolved],
                nears[unresolved],
                fars[unresolved],
                config.root_search_steps,
                config.root_secant_steps,
            )
        return t, hit

    def surface_normals(self, gradient: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        """Unit outward normals from the gradient of the field's level value (an SDF grows outward)."""
        return F.normalize(gradient, dim=-1)

    def get_surface_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        """Surface rendering: colour, normal and depth of the first surface point of each ray.

        Accumulation is 1 where a ray hits and 0 elsewhere; rays that miss show the background
        colour, zero normal and the far bound as depth.
        """
        t_hit, hit = self.find_surface(ray_bundle)
        points = ray_bundle.origins + ray_bundle.directions * t_hit
        _, features, gradient = self.field.get_level_value_and_gradient(points)
        surface_rgb = self.field.get_colors(points, ray_bundle.directions, gradient, features)
        accumulation = hit.to(points.dtype)
        normal = self.surface_normals(gradient) * accumulation
        assert ray_bundle.fars is not None
        return {
            "rgb": torch.where(hit, surface_rgb, self.background_rgb(ray_bundle)),
            "accumulation": accumulation,
            "depth": torch.where(hit, t_hit, ray_bundle.fars),
            "normal": (normal + 1.0) / 2.0,
        }

    def uniform_points_in_sphere(self, num_points: int) -> Float[Tensor, "num_points 3"]:
        directions = F.normalize(torch.randn(num_points, 3, device=self.device), dim=-1)
        radii = self.config.sphere_radius * torch.rand(num_points, 1, device=self.device) ** (1.0 / 3.0)
        return directions * radii

    def eikonal_loss(self, outputs: Dict[str, Tensor]) -> Tensor:
        """IGR's eikonal term `mean((|grad f(x)| - 1)^2)` over samples within `eikonal_radius`."""
        inside = (outputs["eikonal_points"].norm(dim=-1) < self.config.eikonal_radius).float()
        error = (outputs["gradients"].norm(dim=-1) - 1.0) ** 2
        return (error * inside).sum() / (inside.sum() + 1e-5)

    def curvature_loss(self, outputs: Dict[str, Tensor]) -> Tensor:
        """`mean_absolute_laplacian` over the curvature points within `eikonal_radius`, with their weights."""
        laplacians = outputs["laplacians"]
        inside = (outputs["curvature_points"].norm(dim=-1) < self.config.eikonal_radius).to(laplacians.dtype)
        return mean_absolute_laplacian(laplacians, inside * outputs["curvature_weights"].to(laplacians.dtype))

    def curvature_loss_weight(self) -> Union[float, Tensor]:
        """`curvature_loss_weight_at` the current training step (see the config's `curvature_*` settings)."""
        config = self.config
        return curvature_loss_weight_at(
            self.training_step,
            config.curvature_loss_weight,
            config.curvature_warmup_steps,
            self.field.numerical_gradient_step(),
            self.initial_difference_step,
            config.curvature_follows_levels,
        )

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        gt_rgb = batch["image"].to(self.device)[..., :3]
        fg_mask = self.foreground_mask(batch)
        loss_dict: Dict[str, Tensor] = {}
        if fg_mask is not None and self.config.mask_loss_weight > 0:
            # with a mask loss, colour is supervised on the object (NeuS's masked setting) and, with
            # `color_loss_outside_mask`, beside it; normalised by the object's rays either way
            color_error = (outputs["rgb"] - gt_rgb).abs() * fg_mask
            if self.config.color_loss_outside_mask:
                # the background this pass rendered (outside training a constant colour, not among the outputs)
                background = outputs.get("background_rgb", self.background_rgb_constant()).detach()
                color_error = color_error + (outputs["rgb"] - background).abs() * (1.0 - fg_mask)
            loss_dict["rgb_loss"] = color_error.sum() / (fg_mask.sum() * 3 + 1e-5)
            loss_dict["mask_loss"] = self.config.mask_loss_weight * mask_cross_entropy(outputs["accumulation"], fg_mask)
        else:
            loss_dict["rgb_loss"] = (outputs["rgb"] - gt_rgb).abs().mean()
        if self.training and self.record_ray_errors is not None and "indices" in batch:
            self.record_ray_errors(batch["indices"], ray_errors(outputs["rgb"].detach(), gt_rgb, outputs["accumulation"].detach(), fg_mask))
        if self.training and self.config.eikonal_loss_weight > 0:
            loss_dict["eikonal_loss"] = self.config.eikonal_loss_weight * self.eikonal_loss(outputs)
        if self.training and "laplacians" in outputs:
            loss_dict["curvature_loss"] = self.curvature_loss_weight() * self.curvature_loss(outputs)
        if self.training and self.config.grid_smoothness_loss_weight > 0:
            roughness = self.field.geometry_network.encoding.coarse_level_roughness(self.config.grid_smoothness_levels)
            loss_dict["grid_smoothness_loss"] = self.config.grid_smoothness_loss_weight * roughness
        if self.training:
            self.camera_optimizer.get_loss_dict(loss_dict)
        return loss_dict

    def foreground_mask(self, batch: Dict[str, Tensor]) -> Optional[Float[Tensor, "*bs 1"]]:
        """The object mask of the batch's rays as floats in {0, 1}, if the data has masks."""
        mask = batch.get("fg_mask")
        if mask is None:
            return None
        return mask.to(self.device).float()

    def target_rgb(self, batch: Dict[str, Tensor]) -> Tuple[Float[Tensor, "*bs 3"], Optional[Float[Tensor, "*bs 1"]]]:
        """The photograph as the model is asked to render it, and the mask if the data has one. With a mask loss the
        model explains only the object, so the target is the object on the model's background colour; otherwise
        the photograph itself."""
        gt_rgb = batch["image"].to(self.device)[..., :3]
        fg_mask = self.foreground_mask(batch)
        if fg_mask is not None and self.config.mask_loss_weight > 0:
            gt_rgb = gt_rgb * fg_mask + (1.0 - fg_mask) * self.background_rgb_constant()
        return gt_rgb, fg_mask

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        """`psnr` of the batch's rays against `target_rgb` and, with masks, `psnr_masked` over the rays inside the
        mask alone (a weighted mean, not a selection: no host sync)."""
        metrics_dict: Dict[str, Tensor] = {}
        gt_rgb, fg_mask = self.target_rgb(batch)
        squared_error = (outputs["rgb"].detach() - gt_rgb) ** 2
        metrics_dict["psnr"] = -10.0 * torch.log10(squared_error.mean().clamp(min=1e-10))
        if fg_mask is not None:
            inside_error = (squared_error * fg_mask).sum() / (3.0 * fg_mask.sum()).clamp(min=1.0)
            metrics_dict["psnr_masked"] = -10.0 * torch.log10(inside_error.clamp(min=1e-10))
        if self.training:
            metrics_dict["eikonal"] = self.eikonal_loss(outputs).detach()
            if "laplacians" in outputs:
                metrics_dict["mean_abs_laplacian"] = self.curvature_loss(outputs).detach()
            self.camera_optimizer.get_metrics_dict(metrics_dict)
        return metrics_dict

    # -- evaluation images ---------------------------------------------------------------------

    def _lpips_metric(self):
        if self._lpips is None and not self._lpips_unavailable:
            try:
                from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

                self._lpips = LearnedPerceptualImagePatchSimilarity(normalize=True).to(self.device)
            except Exception as error:  # no network or no cached weights: LPIPS is skipped, not fatal
                self._lpips_unavailable = True
                warnings.warn(f"LPIPS is skipped: its weights could not be loaded ({type(error).__name__}: {error}).", stacklevel=2)
        return self._lpips

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

        gt_rgb, fg_mask = self.target_rgb(batch)
        predicted_rgb = outputs["rgb"]
        gt_chw = torch.moveaxis(gt_rgb, -1, 0)[None]
        pred_chw = torch.moveaxis(predicted_rgb, -1, 0)[None].clamp(0.0, 1.0)
        metrics: Dict[str, float] = {
            "psnr": float(peak_signal_noise_ratio(pred_chw, gt_chw, data_range=1.0)),
            "ssim": float(structural_similarity_index_measure(pred_chw, gt_chw, data_range=1.0)),
        }
        if fg_mask is not None:
            inside = fg_mask[..., 0] > 0.5
            if inside.any():
                mse = F.mse_loss(predicted_rgb[inside], gt_rgb[inside])
                metrics["psnr_masked"] = float(-10.0 * torch.log10(mse))
        lpips = self._lpips_metric()
        if lpips is not None:
            metrics["lpips"] = float(lpips(pred_chw, gt_chw))
        images = {
            "img": torch.cat([gt_rgb, predicted_rgb], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"]),
            "normal": outputs["normal"],
        }
        return metrics, images

    def background_rgb_constant(self) -> Tensor:
        value = 1.0 if self.config.background_color == "white" else 0.0
        return torch.full((3,), value, device=self.device)
