"""Geometry and radiance networks shared by NeuS, VolSDF and UNISURF.

The geometry network maps a point of the unit-sphere space to a level-set value (a signed distance
for NeuS/VolSDF, an occupancy logit for UNISURF) and a feature vector; the radiance network maps
(point, view direction, surface normal, feature) to a colour, as in IDR (Yariv et al. 2020, sec. 3.3).

The field knows nothing of rays: it is evaluated at points and returns tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Literal, Optional, Set, Tuple, Type, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from neurecon_ns.fields.central_differences import (
    gradient_from_neighbours,
    laplacian_from_neighbours,
    stencil_points,
)
from neurecon_ns.fields.hash_encoding import HashGridConfig, ProgressiveHashEncoding
from neurecon_ns.fields.level_set_network import LevelSetNetwork
from neurecon_ns.fields.siren import SirenGeometryConfig
from neurecon_ns.fields.softplus_mlp import SoftplusMLPWithGradient, level_value_without_grad
from neurecon_ns.utils.accelerator import at_least_float32, full_precision
from neurecon_ns.utils.precision import Precision, precision_message, product_dtype, resolve_precision


class PositionalEncoding(nn.Module):
    """NeRF's frequency encoding as NeuS and IDR use it: `[x, sin(2^k x), cos(2^k x)]`, k = 0..L-1.

    Unlike nerfstudio's `NeRFEncoding` there is no 2*pi factor: the geometric initialisation below
    assumes this exact form (the raw coordinates come first).
    """

    def __init__(self, in_dim: int, num_frequencies: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.num_frequencies = num_frequencies
        self.register_buffer("frequencies", 2.0 ** torch.arange(num_frequencies, dtype=torch.float32), persistent=False)

    has_jacobian = True
    """`forward_with_jacobian` is available (the geometry network's closed-form gradient uses it)."""

    def get_out_dim(self) -> int:
        return self.in_dim * (1 + 2 * self.num_frequencies)

    def forward(self, x: Float[Tensor, "*bs in_dim"]) -> Float[Tensor, "*bs out_dim"]:
        if self.num_frequencies == 0:
            return x
        scaled = (x[..., None, :] * self.frequencies[:, None]).flatten(-2)  # [..., L * in_dim]
        return torch.cat([x, torch.sin(scaled), torch.cos(scaled)], dim=-1)

    def forward_with_jacobian(
        self, x: Float[Tensor, "num_points in_dim"]
    ) -> Tuple[Float[Tensor, "num_points out_dim"], Float[Tensor, "num_points out_dim in_dim"]]:
        """The encoding and its derivative with respect to `x` (d sin(2^k x)/dx = 2^k cos(2^k x), d cos(2^k x)/dx
        = -2^k sin(2^k x), each on its own coordinate)."""
        identity = torch.eye(self.in_dim, device=x.device, dtype=x.dtype).expand(x.shape[0], self.in_dim, self.in_dim)
        if self.num_frequencies == 0:
            return x, identity
        scaled = x[:, None, :] * self.frequencies[:, None]  # [N, L, in_dim]
        sin, cos = torch.sin(scaled), torch.cos(scaled)
        frequencies = self.frequencies[:, None]
        jacobian = torch.cat(
            [identity, torch.diag_embed(frequencies * cos).flatten(1, 2), torch.diag_embed(-frequencies * sin).flatten(1, 2)], dim=1
        )
        return torch.cat([x, sin.flatten(1), cos.flatten(1)], dim=-1), jacobian


@dataclass
class GeometryNetworkConfig(InstantiateConfig):
    """The geometry MLP of NeuS/IDR: level-set value and a feature vector per point."""

    _target: Type = field(default_factory=lambda: GeometryNetwork)
    num_layers: int = 8
    """Number of hidden layers."""
    hidden_dim: int = 256
    """Width of the hidden layers."""
    skip_layers: Tuple[int, ...] = (4,)
    """Hidden layers whose input is concatenated with the encoded point (DeepSDF skip)."""
    encoding: Literal["frequency", "hash"] = "frequency"
    """Input encoding: NeRF's frequency encoding (NeuS, IDR) or a multi-resolution hash grid (fast preset)."""
    num_frequencies: int = 6
    """Frequencies of the positional encoding of the point (0 disables it)."""
    hash_grid: HashGridConfig = field(default_factory=HashGridConfig)
    """The hash grid, when `encoding` is "hash"."""
    feature_dim: int = 256
    """Size of the feature vector passed to the radiance network."""
    softplus_beta: float = 100.0
    """Sharpness of the Softplus activation."""
    geometric_init: bool = True
    """Initialise the network to the SDF of a sphere (Atzmon & Lipman, SAL)."""
    init_radius: float = 0.5
    """Radius of the initial sphere."""
    inside_out: bool = False
    """Flip the initial sphere's sign (for scenes seen from inside, e.g. rooms)."""
    use_weight_norm: bool = True
    """Weight normalisation of every linear layer."""
    input_scale: float = 1.0
    """Points are multiplied by this before encoding; the output SDF is divided by it."""
    implementation: Literal["fused", "reference"] = "fused"
    """How the MLP is evaluated. "fused": the closed-form pass of `softplus_mlp.py` (level value, features and the
    SDF gradient in one autograd node with a hand-written first-order backward, and a level query outside
    autograd that computes only the level row); "reference": the layers one by one under autograd (the gradient
    by autograd, which the eikonal loss differentiates a second time). Both compute the same function
    (tests/test_fields.py); tiny-cuda-nn's grid has no Jacobian, so with it the gradient is the reference's."""


class GeometryNetwork(LevelSetNetwork):
    """MLP `x -> (f(x), z(x))`: a level-set value and a feature vector, with a skip connection.

    Its evaluation is chosen once, here, from `config.implementation`: `fused_level_query` and `fused_gradient`
    say which queries the fused pass serves."""

    config: GeometryNetworkConfig

    def __init__(self, config: GeometryNetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.feature_dim = config.feature_dim
        if config.encoding == "hash":
            self.encoding = ProgressiveHashEncoding(config.hash_grid)
        else:
            self.encoding = PositionalEncoding(3, config.num_frequencies)
        encoded_dim = self.encoding.get_out_dim()
        out_dim = 1 + config.feature_dim
        self.activation = nn.Softplus(beta=config.softplus_beta)

        layers = []
        in_dim = encoded_dim
        for index in range(config.num_layers + 1):
            is_last = index == config.num_layers
            layer_out = out_dim if is_last else config.hidden_dim
            # the layer before a skip outputs fewer channels so that the concatenation has hidden_dim
            if not is_last and (index + 1) in config.skip_layers:
                layer_out = config.hidden_dim - encoded_dim
            layer_in = in_dim + encoded_dim if index in config.skip_layers else in_dim
            linear = nn.Linear(layer_in, layer_out)
            if config.geometric_init:
                self._geometric_init(linear, index, is_last, encoded_dim)
            if config.use_weight_norm:
                linear = weight_norm(linear)
            layers.append(linear)
            in_dim = layer_out
        self.layers = nn.ModuleList(layers)
        self.fused_level_query = config.implementation == "fused"
        self.fused_gradient = config.implementation == "fused" and self.encoding.has_jacobian

    def _geometric_init(self, linear: nn.Linear, index: int, is_last: bool, encoded_dim: int) -> None:
        """SAL initialisation: the network starts as (approximately) the SDF of a sphere of `init_radius`."""
        config = self.config
        out_dim, in_dim = linear.weight.shape
        if is_last:
            sign = -1.0 if config.inside_out else 1.0
            nn.init.normal_(linear.weight, mean=sign * math.sqrt(math.pi) / math.sqrt(in_dim), std=1e-4)
            nn.init.constant_(linear.bias, -sign * config.init_radius)
            return
        nn.init.normal_(linear.weight, 0.0, math.sqrt(2) / math.sqrt(out_dim))
        nn.init.constant_(linear.bias, 0.0)
        if encoded_dim > 3:
            # the encoding's channels beyond x start switched off, so the initial function is smooth
            if index == 0:
                nn.init.constant_(linear.weight[:, 3:], 0.0)
            elif index in config.skip_layers:
                nn.init.constant_(linear.weight[:, -(encoded_dim - 3) :], 0.0)

    def update_to_step(self, step: int) -> None:
        """Per-step schedule of the encoding (the hash grid's progressive levels)."""
        if isinstance(self.encoding, ProgressiveHashEncoding):
            self.encoding.update_to_step(step)

    def central_difference_step(self) -> Union[float, Tensor]:
        """The finest active hash level's cell (shrinking as levels switch on), or 1e-3 without a hash grid."""
        if isinstance(self.encoding, ProgressiveHashEncoding):
            return self.encoding.finest_active_cell()
        return 1e-3

    def forward(self, points: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs out_dim"]:
        """Returns `[level_value, feature...]` per point (the reference evaluation, layer by layer)."""
        return self._mlp(points, level_only=False)

    def level_value(self, points: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 1"]:
        """The level value alone: the output layer's first row only (the samplers' and the mesher's queries
        need no features, which are 256 of the paper network's 257 outputs). The fused query, outside autograd,
        runs the closed-form pass's forward products (no skip concatenation) and returns the value in float32:
        while training (the samplers' queries) its products run in the products' precision (`product_dtype`),
        in evaluation (the mesher, evaluation renders) in float32, so that a mesh is the level set of the smooth
        float32 function of the weights; under autograd, or with the reference implementation, the layers run one
        by one and the value comes back in at least float32 for the arithmetic of the samplers that read it."""
        if torch.is_grad_enabled() or not self.fused_level_query:
            return at_least_float32(self._mlp(points, level_only=True))
        config = self.config
        device_type = points.device.type
        dtype = self.product_dtype if self.training else torch.float32
        with full_precision(device_type):
            encoded = at_least_float32(self.encoding(points.reshape(-1, 3) * config.input_scale))
            parameters = [at_least_float32(tensor) for tensor in self._weights_and_biases()]
            level_value = level_value_without_grad(encoded, config.softplus_beta, config.skip_layers, config.input_scale, parameters, dtype)
        return level_value.reshape(*points.shape[:-1], 1)

    def _weights_and_biases(self) -> List[Tensor]:
        """`[W_0, b_0, ..., W_L, b_L]`, each weight computed once (weight norm) for the closed-form pass."""
        return [tensor for layer in self.layers for tensor in (layer.weight, layer.bias)]

    def _mlp(self, points: Float[Tensor, "*bs 3"], level_only: bool) -> Tensor:
        config = self.config
        encoded = self.encoding(points * config.input_scale)
        hidden = encoded
        for index, layer in enumerate(self.layers):
            if index in config.skip_layers:
                hidden = torch.cat([hidden, encoded], dim=-1) / math.sqrt(2)
            if index < len(self.layers) - 1:
                hidden = self.activation(layer(hidden))
            elif level_only:
                return F.linear(hidden, layer.weight[:1], layer.bias[:1]) / config.input_scale
            else:
                hidden = layer(hidden)
        if config.input_scale == 1.0:
            return hidden
        return torch.cat([hidden[..., :1] / config.input_scale, hidden[..., 1:]], dim=-1)

    def value_features_and_gradient(
        self, points: Float[Tensor, "num_points 3"], create_graph: bool
    ) -> Tuple[Float[Tensor, "num_points 1"], Float[Tensor, "num_points feature_dim"], Float[Tensor, "num_points 3"]]:
        """Level value, features and `d level / d points`: the fused closed form (`forward_with_gradient`) where
        the implementation is "fused" and the encoding has a Jacobian, else autograd through `forward`."""
        if not self.fused_gradient:
            return super().value_features_and_gradient(points, create_graph)
        with torch.set_grad_enabled(create_graph):
            return self.forward_with_gradient(points)

    def forward_with_gradient(
        self, points: Float[Tensor, "num_points 3"]
    ) -> Tuple[Float[Tensor, "num_points 1"], Float[Tensor, "num_points feature_dim"], Float[Tensor, "num_points 3"]]:
        """`forward(points)`, as level value and features, and the level value's gradient with respect to the
        points, the chain rule written out layer by layer: with `z_l = W_l a_{l-1} + b_l` and
        `a_l = softplus_beta(z_l)`,

            d level / d a_{l-1} = W_l^T (sigmoid(beta z_l) * d level / d a_l),

        starting from the level value's row of the last layer, with a skip layer's input split between
        the hidden path and the encoding, and the encoding's Jacobian at the end. The result is the
        same as autograd's (tests/test_fields.py), but the MLP's part is one autograd node
        (`SoftplusMLPWithGradient`) whose first-order backward is written by hand: no double backward of
        `autograd.grad(..., create_graph=True)`, and no graph of the layers' operations.
        """
        config = self.config
        device_type = points.device.type
        dtype = self.product_dtype
        # the encoding and its Jacobian in float32 under mixed precision too: the node takes what it multiplies
        # in `dtype` itself, and the SDF gradient (the eikonal term is a difference of nearly equal numbers) is the
        # float32 product of the encoding's Jacobian and the node's float32 gradient
        with full_precision(device_type):
            encoded, encoding_jacobian = self.encoding.forward_with_jacobian(points * config.input_scale)
            level_value, features, grad_encoded = SoftplusMLPWithGradient.apply(
                encoded, config.softplus_beta, tuple(config.skip_layers), config.input_scale, dtype, *self._weights_and_biases()
            )
            # the input scale cancels: d (level / s) / d x at x * s
            return level_value, features, torch.einsum("nd,nda->na", grad_encoded, encoding_jacobian)


@dataclass
class RadianceNetworkConfig(InstantiateConfig):
    """The colour MLP of IDR/NeuS: c(x, v, n, z)."""

    _target: Type = field(default_factory=lambda: RadianceNetwork)
    num_layers: int = 4
    """Number of hidden layers."""
    hidden_dim: int = 256
    """Width of the hidden layers."""
    num_direction_frequencies: int = 4
    """Frequencies of the positional encoding of the view direction."""
    use_directions: bool = True
    """Feed the view direction. Without it the colour of a point cannot change with the view (a Lambertian
    surface), so a recess or an offset wall cannot be imitated by colour that follows the camera."""
    use_weight_norm: bool = True
    """Weight normalisation of every linear layer."""
    use_points: bool = True
    """Feed the point position."""
    use_normals: bool = True
    """Feed the level-set gradient (the surface normal, unnormalised as in IDR)."""


class RadianceNetwork(nn.Module):
    """MLP `(x, v, n, z) -> rgb` in [0, 1]."""

    product_dtype: torch.dtype = torch.float32
    """The dtype of the products (float32, or a half precision where the field's precision asks for one:
    `neurecon_ns.utils.precision`); the colour comes back in float32 for the losses."""

    def __init__(self, config: RadianceNetworkConfig, feature_dim: int) -> None:
        super().__init__()
        self.config = config
        self.direction_encoding = PositionalEncoding(3, config.num_direction_frequencies)
        in_dim = feature_dim + (self.direction_encoding.get_out_dim() if config.use_directions else 0)
        in_dim += 3 if config.use_points else 0
        in_dim += 3 if config.use_normals else 0
        dims = [in_dim] + [config.hidden_dim] * config.num_layers + [3]
        layers = []
        for layer_in, layer_out in zip(dims[:-1], dims[1:]):
            linear = nn.Linear(layer_in, layer_out)
            layers.append(weight_norm(linear) if config.use_weight_norm else linear)
        self.layers = nn.ModuleList(layers)

    def forward(
        self,
        points: Float[Tensor, "*bs 3"],
        directions: Float[Tensor, "*bs 3"],
        normals: Float[Tensor, "*bs 3"],
        features: Float[Tensor, "*bs feature_dim"],
    ) -> Float[Tensor, "*bs 3"]:
        # the first layer's input is `[point, encoded direction, normal, feature]`; its feature block (256 of the
        # paper network's 289 columns) is multiplied on its own, so that the backward pass's widest product has
        # a width the matmul kernels like and the concatenation holds only the 33 narrow columns
        narrow = [self.direction_encoding(directions)] if self.config.use_directions else []
        if self.config.use_points:
            narrow.insert(0, points)
        if self.config.use_normals:
            narrow.append(normals)
        batch_shape, feature_dim = features.shape[:-1], features.shape[-1]
        # operands and parameters cast here to a half precision (the parameters stay float32, their gradients come
        # back through the casts); in float32 autocast, where it is on, casts them as it does
        dtype = self.product_dtype
        cast = (lambda tensor: tensor.to(dtype)) if dtype in (torch.float16, torch.bfloat16) else (lambda tensor: tensor)
        first, *rest = self.layers
        weight = first.weight
        narrow_input = torch.cat(narrow, dim=-1).reshape(-1, weight.shape[1] - feature_dim)
        hidden = F.linear(cast(narrow_input), cast(weight[:, :-feature_dim]), cast(first.bias))
        # out of place: autocast casts `addmm`'s operands to one precision, never an in-place product's
        hidden = torch.addmm(hidden, cast(features.reshape(-1, feature_dim)), cast(weight[:, -feature_dim:].t()))
        for layer in rest:
            hidden = F.linear(torch.relu(hidden), cast(layer.weight), cast(layer.bias))
        hidden = hidden.reshape(*batch_shape, hidden.shape[-1])
        return torch.sigmoid(at_least_float32(hidden))


def is_out_of_memory(error: BaseException) -> bool:
    """A device or host allocation that failed (CUDA's `OutOfMemoryError`, or the CPU allocator's message)."""
    out_of_memory_type = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(error, out_of_memory_type) or "out of memory" in str(error) or "can't allocate memory" in str(error)


@dataclass
class SurfaceFieldConfig(InstantiateConfig):
    """Geometry network + radiance network."""

    _target: Type = field(default_factory=lambda: SurfaceField)
    geometry: GeometryNetworkConfig = field(default_factory=GeometryNetworkConfig)
    """The level-set network."""
    radiance: RadianceNetworkConfig = field(default_factory=RadianceNetworkConfig)
    """The colour network."""
    geometry_type: Literal["mlp", "siren"] = "mlp"
    """Kind of geometry network: "mlp", the IDR/NeuS softplus MLP (`geometry`); "siren", periodic activations
    (`siren`)."""
    siren: SirenGeometryConfig = field(default_factory=SirenGeometryConfig)
    """The SIREN geometry network, when `geometry_type` is "siren"."""
    gradient: Literal["analytic", "numerical"] = "analytic"
    """How the level set's gradient (normals, eikonal loss) is computed. "analytic": the derivative of the
    network, as its implementation gives it (`geometry.implementation`: the fused closed form, whose loss needs a
    first-order backward only, or autograd, which the eikonal loss differentiates a second time);
    "numerical": central differences (6 more evaluations, no second derivative: what tiny-cuda-nn's grids
    need, since they have no second derivatives), whose seven values also give the Laplacian that the
    curvature loss reads (`central_differences.py`)."""
    numerical_gradient_step: float = 0.0
    """Central-difference step in training-space units; 0 leaves it to the network (the finest active hash
    level's cell, shrinking as levels switch on, or 1e-3 without a hash grid). A step of one finest cell puts
    the six neighbours in the adjacent cells of the finest active level, so the differences, and the losses on
    them, reach the grid's vertices around a point rather than only the 8 of its own cell."""
    precision: Precision = "auto"
    """Precision of the geometry (fused implementation) and radiance networks' products: "bf16" (bfloat16 with
    float32 accumulation; the parameters, the level value the mappings read and the SDF gradient stay float32),
    "fp32", "autocast" (follow the autocast around the step: nerfstudio's --mixed-precision on a GPU), or "auto":
    bf16 on a CPU with bf16 matrix units (amx_bf16 or avx512_bf16 flags), fp32 on other CPUs, autocast on GPUs.
    Chosen when the field first runs and reported in one line; docs/speed.md says what runs in which."""
    compile: bool = False
    """`torch.compile` the networks' passes (the geometry network with its closed-form gradient, the
    geometry network alone, the radiance network). Needs a C++ compiler on a CPU (Triton on a GPU); where
    compilation fails, the field says so once and runs eagerly. See docs/speed.md for what it buys."""


class SurfaceField(nn.Module):
    """Evaluates the level-set function, its gradient and the colour at points.

    Also satisfies nerfstudio's `ns-export marching-cubes` contract: `forward_geonetwork(x)[:, 0]` is
    the level-set function whose zero is the surface.
    """

    config: SurfaceFieldConfig

    def __init__(self, config: SurfaceFieldConfig) -> None:
        super().__init__()
        self.config = config
        if config.gradient not in ("analytic", "numerical"):
            from neurecon_ns.errors import UserInputError

            raise UserInputError(
                f"networks.gradient '{config.gradient}' is not 'analytic' or 'numerical' (pipeline.model.networks in "
                "the run's config.yml); autograd's gradient is `gradient: analytic` with `geometry.implementation: reference`."
            )
        self.geometry_network: LevelSetNetwork = config.siren.setup() if config.geometry_type == "siren" else config.geometry.setup()
        self.radiance_network = RadianceNetwork(config.radiance, feature_dim=self.geometry_network.feature_dim)
        self.resolved_precision: Optional[str] = None  # "fp32", "bf16" or "autocast", once the field has run
        self._compiled: Dict[str, Callable] = {}  # network passes given to torch.compile, by name
        self._compile_failed = False
        self._backward_compiled: Set[str] = set()  # passes whose compiled backward has run once

    def resolve_precision(self, device_type: str) -> str:
        """The products' precision on `device_type`, chosen at the first call (from the config, the CPU's flags or
        the GPU's autocast) and reported in one line."""
        if self.resolved_precision is None:
            self.resolved_precision = resolve_precision(self.config.precision, device_type)
            from nerfstudio.utils.rich_utils import CONSOLE

            CONSOLE.print(precision_message(self.config.precision, self.resolved_precision, device_type))
        return self.resolved_precision

    def _set_product_dtype(self, device_type: str) -> None:
        """Hand both networks the dtype of their products for this call: read here, before the field turns
        autocast off around the level value and its gradient, since "autocast" follows the caller's."""
        dtype = product_dtype(self.resolve_precision(device_type), device_type)
        self.geometry_network.product_dtype = self.radiance_network.product_dtype = dtype

    def forward_geonetwork(self, points: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs out_dim"]:
        """`[level_value, feature...]` per point (nerfstudio's exporter reads column 0)."""
        return self.geometry_network(points)

    def get_level_value(self, points: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 1"]:
        """The level-set value alone (SDF or occupancy logit)."""
        self._set_product_dtype(points.device.type)
        return self._network_pass("level value", self.geometry_network.level_value)(points)

    def update_to_step(self, step: int) -> None:
        """Per-step schedules of the networks (the hash grid's progressive levels)."""
        self.geometry_network.update_to_step(step)

    def numerical_gradient_step(self) -> Union[float, Tensor]:
        """The central differences' step `h`: the config's, else the network's."""
        if self.config.numerical_gradient_step > 0:
            return self.config.numerical_gradient_step
        return self.geometry_network.central_difference_step()

    def get_level_value_and_gradient(
        self, points: Float[Tensor, "*bs 3"], create_graph: Optional[bool] = None
    ) -> Tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs feature_dim"], Float[Tensor, "*bs 3"]]:
        """Level value, feature and the gradient d(level)/dx (analytic or numerical, see the config).

        The analytic gradient is the network's own (`value_features_and_gradient`: the fused closed form, or
        autograd under `enable_grad`, so that normals also come out of nerfstudio's `no_grad` rendering paths).
        The graph is kept only while training (the eikonal loss differentiates through it).

        Under mixed precision all three run in float32: the NeuS, VolSDF and UNISURF mappings read the level
        value at a sharpness of hundreds to thousands per unit, the eikonal term is a difference of nearly
        equal numbers, and central differences divide a difference of level values by `2h` (about 1e-3 once
        all hash levels are active), where half precision's rounding would be most of the result.
        """
        if create_graph is None:
            create_graph = self.training and torch.is_grad_enabled()
        self._set_product_dtype(points.device.type)
        with full_precision(points.device.type):
            return self._level_value_and_gradient(at_least_float32(points), create_graph)

    def _level_value_and_gradient(
        self, points: Float[Tensor, "*bs 3"], create_graph: bool
    ) -> Tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs feature_dim"], Float[Tensor, "*bs 3"]]:
        if self.config.gradient == "numerical":
            return self._level_value_and_numerical_gradient(points, keep_graph=create_graph)
        with_gradient = self._network_pass("geometry and gradient", self.geometry_network.value_features_and_gradient)
        level_value, features, gradient = with_gradient(points.reshape(-1, 3), create_graph)
        batch_shape = points.shape[:-1]
        return level_value.reshape(*batch_shape, 1), features.reshape(*batch_shape, features.shape[-1]), gradient.reshape(points.shape)

    def _network_pass(self, name: str, eager: Callable) -> Callable:
        """`eager`, or its `torch.compile`d version when `compile` is set and compilation has not failed."""
        if not self.config.compile or self._compile_failed:
            return eager
        if name not in self._compiled:
            self._compiled[name] = torch.compile(eager)
        compiled = self._compiled[name]

        def guarded(*args):
            if self._compile_failed:
                return eager(*args)
            try:
                if name not in self._backward_compiled and torch.is_grad_enabled():
                    self._compile_backward(compiled, args)
                    self._backward_compiled.add(name)
                return compiled(*args)
            except Exception as error:  # no C++ compiler, no Triton, an unsupported operator: run eagerly
                if is_out_of_memory(error):
                    raise  # not a compiler's failure: eager would need the memory too
                self._compile_failed = True
                from nerfstudio.utils.rich_utils import CONSOLE

                message = str(error).strip()
                first_line = message.splitlines()[0] if message else type(error).__name__
                CONSOLE.print(f"[yellow]torch.compile of the field failed ({first_line}); running it eagerly "
                              "(set --pipeline.model.networks.compile False to skip the attempt).")
                return eager(*args)

        return guarded

    def _compile_backward(self, compiled: Callable, args: tuple) -> None:
        """Run the compiled pass and its backward once, here, on a graph of their own: Inductor compiles the
        backward lazily at the first `backward()`, which would be outside the guard that falls back to eager (and
        the closed-form node's backward frees what its forward kept, so the caller's graph could not be used for
        it). The parameters' `.grad` is left untouched."""
        # inputs cut from the caller's graph (the radiance pass takes the geometry pass's outputs), whose saved
        # tensors this backward would otherwise free before the training step's own backward
        own_inputs = tuple(arg.detach().requires_grad_(arg.requires_grad) if isinstance(arg, Tensor) else arg for arg in args)
        outputs = compiled(*own_inputs)
        tensors = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        differentiable = [tensor for tensor in tensors if isinstance(tensor, Tensor) and tensor.requires_grad]
        parameters = [parameter for parameter in self.parameters() if parameter.requires_grad]
        if differentiable and parameters:
            total = sum(tensor.float().sum() for tensor in differentiable)
            torch.autograd.grad(total, parameters, allow_unused=True)

    def _level_value_and_neighbours(
        self, points: Float[Tensor, "*bs 3"], keep_graph: bool
    ) -> Tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs feature_dim"], Float[Tensor, "*bs 6"], Union[float, Tensor]]:
        """Level value and features at the points, the level values at their six axis neighbours
        (`central_differences.neighbour_offsets`), all 7 points in one batch, and the step `h`.

        The values stay differentiable in the network's parameters, so the eikonal and curvature losses train
        through the differences without a second derivative.
        """
        step = self.numerical_gradient_step()
        with torch.set_grad_enabled(keep_graph):
            output = self.geometry_network(stencil_points(points, step))
        return output[..., 0, :1], output[..., 0, 1:], output[..., 1:, 0], step

    def _level_value_and_numerical_gradient(
        self, points: Float[Tensor, "*bs 3"], keep_graph: bool
    ) -> Tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs feature_dim"], Float[Tensor, "*bs 3"]]:
        """Central differences `df/dx_i = (f(x + h e_i) - f(x - h e_i)) / 2h` (`central_differences.py`)."""
        level_value, features, neighbour_values, step = self._level_value_and_neighbours(points, keep_graph)
        return level_value, features, gradient_from_neighbours(neighbour_values, step)

    def get_level_value_gradient_and_laplacian(
        self, points: Float[Tensor, "*bs 3"], create_graph: Optional[bool] = None
    ) -> Tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs feature_dim"], Float[Tensor, "*bs 3"], Float[Tensor, "*bs 1"]]:
        """`get_level_value_and_gradient` and the Laplacian of the level value (the curvature loss reads it), by
        second differences at the numerical gradient's step `h`: with numerical gradients from the same seven
        values as the gradient, at no extra cost; with the analytic gradient through `get_laplacian`."""
        if create_graph is None:
            create_graph = self.training and torch.is_grad_enabled()
        if self.config.gradient != "numerical":
            level_value, features, gradient = self.get_level_value_and_gradient(points, create_graph)
            return level_value, features, gradient, self.get_laplacian(points, create_graph)
        with full_precision(points.device.type):
            level_value, features, neighbour_values, step = self._level_value_and_neighbours(at_least_float32(points), create_graph)
            laplacian = laplacian_from_neighbours(level_value, neighbour_values, step)
            return level_value, features, gradient_from_neighbours(neighbour_values, step), laplacian

    def get_laplacian(self, points: Float[Tensor, "*bs 3"], create_graph: Optional[bool] = None) -> Float[Tensor, "*bs 1"]:
        """The Laplacian of the level value from seven more level queries per point (the point and its axis
        neighbours at the numerical gradient's step `h`): what the curvature loss costs beside the analytic
        gradient. The point's own value is queried with its neighbours rather than taken from the rendering pass,
        whose products may run in bfloat16: a difference of 1e-3 between the two paths, divided by `h^2` (about
        6e-5 at a 256-cell level), would be the whole Laplacian; for the same reason all seven run in float32."""
        if create_graph is None:
            create_graph = self.training and torch.is_grad_enabled()
        with full_precision(points.device.type):
            points = at_least_float32(points)
            step = self.numerical_gradient_step()
            # float32 products whatever the field's precision: bfloat16's rounding of each value would swamp it
            self.geometry_network.product_dtype = torch.float32
            with torch.set_grad_enabled(create_graph):
                query = self._network_pass("level value", self.geometry_network.level_value)
                values = query(stencil_points(points, step))[..., 0]
            values = at_least_float32(values)
            return laplacian_from_neighbours(values[..., :1], values[..., 1:], step)

    def get_colors(
        self,
        points: Float[Tensor, "*bs 3"],
        directions: Float[Tensor, "*bs 3"],
        gradients: Float[Tensor, "*bs 3"],
        features: Float[Tensor, "*bs feature_dim"],
    ) -> Float[Tensor, "*bs 3"]:
        self._set_product_dtype(points.device.type)
        return self._network_pass("radiance", self.radiance_network.forward)(points, directions, gradients, features)

    def forward(
        self, points: Float[Tensor, "*bs 3"], directions: Float[Tensor, "*bs 3"], laplacian_rows: int = 0
    ) -> Dict[str, Tensor]:
        """Everything a renderer needs at the points: level value, gradient, colour; and, for the points of the
        first `laplacian_rows` rows of the leading dimension, the level value's Laplacian (`laplacian`, for the
        curvature loss): free with numerical gradients, seven level queries per point with the analytic one."""
        if laplacian_rows > 0 and self.config.gradient == "numerical":
            level_value, features, gradient, laplacian = self.get_level_value_gradient_and_laplacian(points)
            laplacian = laplacian[:laplacian_rows]
        else:
            level_value, features, gradient = self.get_level_value_and_gradient(points)
            if laplacian_rows > 0:
                laplacian = self.get_laplacian(points[:laplacian_rows])
        rgb = self.get_colors(points, directions, gradient, features)
        outputs = {"level": level_value, "gradient": gradient, "rgb": rgb}
        if laplacian_rows > 0:
            outputs["laplacian"] = laplacian
        return outputs
