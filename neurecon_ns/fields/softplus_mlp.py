"""The Softplus MLP of NeuS/IDR with its level-set gradient, as one autograd node with a hand-written backward.

With `x_l` the input of layer `l`, `z_l = x_l W_l^T + b_l`, `a_l = softplus_beta(z_l)` and `s_l = sigmoid(beta z_l)`
(the activation's slope), the level value `y = z_L[0]` has the gradient

    g_{L-1} = W_L[0],    h_l = s_l * g_l,    g_{l-1} = h_l W_l           (d y / d a_l = g_l, d y / d z_l = h_l)

down to the encoded point (a skip layer's `W_l` is split between the hidden input and the encoding).
Training differentiates a loss of both outputs (colour and SDF losses through `y` and the features,
eikonal and normal terms through the gradient). Written out, with `vbar` for d loss / d v:

    gradient path, l = 0 .. L-1:   hbar_l = gbar_{l-1} W_l^T,  Wbar_l += h_l^T gbar_{l-1},  gbar_l = hbar_l * s_l,
                                   zbar_l(from the slope) = beta * hbar_l * g_l * s_l (1 - s_l)
                                                          = beta * h_l * (hbar_l - gbar_l)
    value path, l = L .. 0:        Wbar_l += zbar_l^T x_l,  bbar_l += sum zbar_l,  abar_{l-1} = zbar_l W_l,
                                   zbar_{l-1} = abar_{l-1} * s_{l-1} + zbar_{l-1}(from the slope)

(`gbar_{-1}` is the loss's gradient with respect to the returned encoding gradient). This is the same
derivative autograd takes through `GeometryNetwork.forward` and the chain above (tests/test_fields.py
compares them in float64), but it runs 6 matrix products and about 10 elementwise passes per layer, reuses
the slopes the forward pass kept, and keeps no autograd graph of the layers' operations. The skip
layer's concatenation is never built: its product is split into the hidden part and the encoding part.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from neurecon_ns.utils.accelerator import at_least_float32, full_precision


class WeightBlock(NamedTuple):
    """The columns of a layer's weight that multiply one of its inputs: the hidden input or (skip layers) the encoding."""

    columns: slice
    of_encoding: bool


class Layer(NamedTuple):
    weight: Tensor  # a skip layer's already divided by sqrt(2)
    bias: Tensor
    blocks: List[WeightBlock]
    scale: float  # what `weight` was multiplied by (for its gradient)


def layers_of(parameters: Sequence[Tensor], encoded_dim: int, skip_layers: Sequence[int], dtype: torch.dtype) -> List[Layer]:
    """The layers, each with its input's blocks, their weights and biases in `dtype` (the products' precision;
    the parameters themselves stay as they are). A skip layer's input `[hidden, encoded] / sqrt(2)` is split in
    two, so that the concatenation is never built (its weight is scaled instead, a small tensor); layer 0's
    hidden input is the encoding itself."""
    layers = []
    for index, (weight, bias) in enumerate(zip(parameters[0::2], parameters[1::2])):
        if index not in skip_layers:
            layers.append(Layer(weight.to(dtype), bias.to(dtype), [WeightBlock(slice(None), index == 0)], 1.0))
            continue
        hidden_dim = weight.shape[1] - encoded_dim
        blocks = [WeightBlock(slice(0, hidden_dim), index == 0), WeightBlock(slice(hidden_dim, None), True)]
        layers.append(Layer((weight / math.sqrt(2)).to(dtype), bias.to(dtype), blocks, 1.0 / math.sqrt(2)))
    return layers


def compute_dtype(product_dtype: torch.dtype, master_dtype: torch.dtype) -> torch.dtype:
    """The dtype the pass runs in: a half precision where one is asked for, else the parameters' own (float32, or
    float64 in the tests that compare with autograd)."""
    return product_dtype if product_dtype in (torch.float16, torch.bfloat16) else master_dtype


def add_product(total: Tensor, a: Tensor, b: Tensor, alpha: float = 1.0) -> Tensor:
    """`total += alpha a b` in place, `total` in the parameters' precision and `a`, `b` in the products': a half
    precision product accumulates in float32 inside the kernel and is added to `total` once (a parameter's
    gradient sums over all points in float32, whatever the products' precision)."""
    if total.dtype == a.dtype:
        return total.addmm_(a, b, alpha=alpha)
    return total.add_(torch.mm(a, b), alpha=alpha)


def aligned_mm(a: Tensor, b: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """`bias + a b` in a matrix whose rows start 16 elements apart (a view of a wider one where the product's
    width is over 16 and not a multiple of 16): BLAS writes aligned rows faster, on the AVX2 and the AVX-512
    machines measured (docs/speed.md), and a strided result costs nothing where it does not."""
    num_columns = b.shape[1]
    if num_columns % 16 == 0 or num_columns < 16:
        return torch.mm(a, b) if bias is None else torch.addmm(bias, a, b)
    out = a.new_empty(a.shape[0], -(-num_columns // 16) * 16)[:, :num_columns]
    return torch.mm(a, b, out=out) if bias is None else torch.addmm(bias, a, b, out=out)


def products(layer: Layer, hidden: Tensor, encoded: Tensor, rows: slice = slice(None)) -> Tensor:
    """`x W[rows]^T + b[rows]` of one layer, its input in blocks."""
    pre_activation = None
    for block in layer.blocks:
        block_input, block_weight = (encoded if block.of_encoding else hidden), layer.weight[rows, block.columns]
        if pre_activation is None:
            pre_activation = aligned_mm(block_input, block_weight.t(), layer.bias[rows])
        else:
            pre_activation.addmm_(block_input, block_weight.t())
    return pre_activation


def softplus_and_slope(pre_activation: Tensor, beta: float) -> Tuple[Tensor, Tensor]:
    """`(softplus_beta(z), sigmoid(beta z))`, the activation from its slope `s`:

        softplus_beta(z) = max(z, 0) + log(1 + exp(-beta |z|)) / beta = max(z, 0) - log(max(s, 1 - s)) / beta,

    since `1 / (1 + exp(-beta |z|))` is `s` for `z >= 0` and `1 - s` below. One exponential and one logarithm
    per element, where torch's CPU softplus takes an exponential and a `log1p` (the slowest of the three), and
    the argument of the logarithm lies in [1/2, 1], where it is exact to the dtype's precision."""
    slope = torch.mul(pre_activation, beta).sigmoid_()
    activation = torch.relu(pre_activation).sub_(torch.maximum(slope, 1.0 - slope).log_(), alpha=1.0 / beta)
    return activation, slope


def level_value_without_grad(
    encoded: Tensor,
    beta: float,
    skip_layers: Sequence[int],
    input_scale: float,
    parameters: Sequence[Tensor],
    product_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """`z_L[0] / input_scale` alone, outside autograd (the samplers' and the mesher's queries): the forward pass
    of `SoftplusMLPWithGradient` with no slopes kept and only the output layer's first row; the value comes back
    in the encoding's dtype."""
    dtype = compute_dtype(product_dtype, encoded.dtype)
    layers = layers_of(parameters, encoded.shape[1], skip_layers, dtype)
    encoded_products = encoded.to(dtype)
    hidden = encoded_products
    for layer in layers[:-1]:
        hidden, _ = softplus_and_slope(products(layer, hidden, encoded_products), beta)
    return products(layers[-1], hidden, encoded_products, slice(0, 1)).to(encoded.dtype).div_(input_scale)


class SoftplusMLPWithGradient(torch.autograd.Function):
    """`(encoded, beta, skip_layers, input_scale, product_dtype, W_0, b_0, ..., W_L, b_L)
    -> (z_L[0] / input_scale, z_L[1:], d z_L[0] / d encoded)`.

    The output layer's first row (the level value) and its other rows (the features) are separate products and
    separate outputs: a 257-wide product and its split (and, in the backward pass, the gradient assembled
    from two slices) cost more than a 256-wide product and a matrix-vector product.

    The products, and the tensors between them, run in `product_dtype` where it is a half precision (bfloat16 on
    CPUs with bf16 units, float16 or bfloat16 under a GPU's autocast), else in the parameters' precision; the
    autocast around the call is ignored, on any device (as `torch.amp.custom_fwd(cast_inputs=...)` and
    `custom_bwd` do for one device type). Each half precision product accumulates in float32 inside the kernel
    and rounds its result once. What stays in float32 whatever `product_dtype` is: the parameters and their
    gradients (each a sum over all points), the level value as returned (the mappings read it at sharpnesses of
    hundreds to thousands), and the gradient with respect to the encoding (summed from the layers' blocks in
    float32, then multiplied by the encoding's Jacobian for the eikonal term, a difference of nearly equal
    numbers). The features come back in the products' precision, which is what the radiance network reads.
    """

    @staticmethod
    def forward(
        ctx, encoded: Tensor, beta: float, skip_layers: Tuple[int, ...], input_scale: float, product_dtype: torch.dtype, *parameters: Tensor
    ):
        with full_precision(encoded.device.type):
            parameters = tuple(at_least_float32(parameter) for parameter in parameters)
            encoded = at_least_float32(encoded)
            dtype = compute_dtype(product_dtype, encoded.dtype)
            return SoftplusMLPWithGradient._forward(ctx, encoded, beta, skip_layers, input_scale, dtype, parameters)

    @staticmethod
    def _forward(
        ctx, encoded: Tensor, beta: float, skip_layers: Tuple[int, ...], input_scale: float, dtype: torch.dtype, parameters: Tuple[Tensor, ...]
    ):
        layers = layers_of(parameters, encoded.shape[1], skip_layers, dtype)
        encoded_products = encoded.to(dtype)  # x_0, in the products' precision
        num_hidden = len(layers) - 1  # `layers[num_hidden]` is the output layer
        inputs: List[Tensor] = []  # x_l (the hidden part of a skip layer's input)
        slopes: List[Tensor] = []  # s_l
        hidden = encoded_products
        for layer in layers[:num_hidden]:
            inputs.append(hidden)
            hidden, slope = softplus_and_slope(products(layer, hidden, encoded_products), beta)
            slopes.append(slope)
        inputs.append(hidden)
        level = products(layers[num_hidden], hidden, encoded_products, slice(0, 1)).to(encoded.dtype).div_(input_scale)
        features = products(layers[num_hidden], hidden, encoded_products, slice(1, None))

        # the level value's gradient, from the output layer's first row (the same for every point) down
        grad_encoded = torch.zeros_like(encoded)
        grad_hidden = None  # g_l
        for block in layers[num_hidden].blocks:
            row = layers[num_hidden].weight[0, block.columns]
            if block.of_encoding:
                grad_encoded += row
            else:
                grad_hidden = row.expand(encoded.shape[0], -1)
        slope_times_grads: List[Optional[Tensor]] = [None] * num_hidden  # h_l
        for index in range(num_hidden - 1, -1, -1):
            slope_times_grad = slopes[index] * grad_hidden
            slope_times_grads[index] = slope_times_grad
            # one product for the whole input (a wide output runs faster than two narrow ones), then split
            grad_input = torch.mm(slope_times_grad, layers[index].weight)
            for block in layers[index].blocks:
                if block.of_encoding:
                    grad_encoded += grad_input[:, block.columns]
                else:
                    grad_hidden = grad_input[:, block.columns]

        ctx.beta, ctx.input_scale = beta, input_scale
        ctx.save_for_backward(encoded, *parameters)
        # intermediates (neither inputs nor outputs) stay on ctx, so that backward can free them layer by layer;
        # the layers' weights in the products' precision are cast once per step, here
        ctx.layers, ctx.encoded_products = layers, encoded_products
        ctx.inputs, ctx.slopes, ctx.slope_times_grads = inputs, slopes, slope_times_grads
        return level, features, grad_encoded

    @staticmethod
    @once_differentiable
    def backward(ctx, level_grad: Optional[Tensor], features_grad: Optional[Tensor], grad_encoded_grad: Optional[Tensor]):
        encoded = ctx.saved_tensors[0]
        with full_precision(encoded.device.type):
            if level_grad is not None:  # the input scale divided in float32, as in the forward pass
                level_grad = at_least_float32(level_grad) / ctx.input_scale
            dtype = ctx.encoded_products.dtype
            output_grads = (None if grad is None else grad.to(dtype) for grad in (level_grad, features_grad, grad_encoded_grad))
            return SoftplusMLPWithGradient._backward(ctx, *output_grads)

    @staticmethod
    def _backward(ctx, level_grad: Optional[Tensor], features_grad: Optional[Tensor], grad_encoded_grad: Optional[Tensor]):
        encoded, *parameters = ctx.saved_tensors
        layers, encoded_products = ctx.layers, ctx.encoded_products
        inputs, slopes, slope_times_grads = ctx.inputs, ctx.slopes, ctx.slope_times_grads
        del ctx.layers, ctx.encoded_products, ctx.inputs, ctx.slopes, ctx.slope_times_grads
        num_hidden = len(layers) - 1
        # parameter gradients in the parameters' precision; d loss / d (everything between) in the products'
        weight_grads = [torch.zeros_like(weight) for weight in parameters[0::2]]
        bias_grads = [torch.zeros_like(bias) for bias in parameters[1::2]]
        encoded_grad = torch.zeros_like(encoded) if ctx.needs_input_grad[0] else None
        if grad_encoded_grad is None:
            grad_encoded_grad = torch.zeros_like(encoded_products)
        num_points, output_dim = encoded.shape[0], layers[num_hidden].weight.shape[0]
        if level_grad is None:
            level_grad = encoded_products.new_zeros(num_points, 1)
        if features_grad is None:
            features_grad = encoded_products.new_zeros(num_points, output_dim - 1)

        # gradient path, from the encoding up; `gbar` is d loss / d g_{l-1}, the gradient below layer l
        # the part of zbar_l that comes through s_l is beta * hbar * g * s * (1 - s) = beta * h * (hbar - gbar_l);
        # the differences are kept, the product is taken in the value path
        slope_grad_factors: List[Optional[Tensor]] = []  # hbar_l - gbar_l
        gbar = grad_encoded_grad
        for index in range(num_hidden):
            layer, slope_times_grad = layers[index], slope_times_grads[index]
            hbar = None
            for block in layer.blocks:
                block_gbar = grad_encoded_grad if block.of_encoding else gbar
                add_product(weight_grads[index][:, block.columns], slope_times_grad.t(), block_gbar, alpha=layer.scale)
                if hbar is None:
                    hbar = aligned_mm(block_gbar, layer.weight[:, block.columns].t())
                else:
                    hbar.addmm_(block_gbar, layer.weight[:, block.columns].t())
            slope = slopes[index]
            gbar = hbar * slope
            slope_grad_factors.append(hbar.sub_(gbar))
        output_layer = layers[num_hidden]
        for block in output_layer.blocks:
            block_gbar = grad_encoded_grad if block.of_encoding else gbar
            weight_grads[num_hidden][0, block.columns] += output_layer.scale * block_gbar.sum(dim=0).to(encoded.dtype)

        # value path, from the output down; `zbar` is d loss / d z_l, the output layer's in two blocks of rows
        # (the features' first: the level row's product is a rank-one update, fast in place only)
        zbar_rows = [(slice(1, None), features_grad), (slice(0, 1), level_grad)]
        for index in range(num_hidden, -1, -1):
            layer = layers[index]
            input_grad = None
            for rows, zbar in zbar_rows:
                # a half precision sum accumulates in float32 inside the kernel; `dtype=` would cast the input first
                bias_grads[index][rows] = zbar.sum(dim=0)
                for block in layer.blocks:
                    block_input = encoded_products if block.of_encoding else inputs[index]
                    add_product(weight_grads[index][rows, block.columns], zbar.t(), block_input, alpha=layer.scale)
                if index > 0 or encoded_grad is not None:  # one product for the whole input, then split
                    weight = layer.weight[rows]
                    input_grad = torch.mm(zbar, weight) if input_grad is None else input_grad.addmm_(zbar, weight)
            inputs[index] = None
            if input_grad is None:
                break
            for block in layer.blocks:
                if not block.of_encoding:
                    hidden_grad = input_grad[:, block.columns]
                elif encoded_grad is not None:
                    encoded_grad += input_grad[:, block.columns]
            if index == 0:
                break
            zbar = hidden_grad.mul_(slopes[index - 1])
            zbar.addcmul_(slope_times_grads[index - 1], slope_grad_factors[index - 1], value=ctx.beta)
            zbar_rows = [(slice(None), zbar)]
            slope_times_grads[index - 1] = slope_grad_factors[index - 1] = None
        parameter_grads = [grad for pair in zip(weight_grads, bias_grads) for grad in pair]
        return (encoded_grad, None, None, None, None, *parameter_grads)
