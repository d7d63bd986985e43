"""Multi-resolution hash-grid features for the geometry network (Instant-NGP, Mueller et al. 2022).

The encoding of a point is `[x, h_1(x), ..., h_L(x)]`: the raw coordinates (which the geometric
initialisation turns into a sphere SDF) followed by the trilinearly interpolated features of `L` grids
of growing resolution `N_l = floor(N_min * b^l)`, `b = exp((ln N_max - ln N_min) / (L - 1))`, each held
in a table of at most `T` feature vectors: a level with `(N_l + 1)^3 <= T` vertices is stored densely,
a finer one through the spatial hash `(x * 1) xor (y * 2654435761) xor (z * 805459861) mod T`.
With tiny-cuda-nn installed, its fused kernels (through nerfstudio's `HashEncoding`) evaluate the grids;
otherwise `MultiResolutionGrid` below does, in plain torch, on any device: all levels and all 8 cell
corners in one gather, which is what keeps it usable on a CPU. The torch grid can also read its coarsest
levels through quadratic B-splines (27 vertices around the nearest one), whose slope, unlike the trilinear
one, does not jump at the cell faces.

Levels are switched on progressively (coarse to fine, as in Neuralangelo and instant-nsr-pl): features
of levels not yet active are multiplied by 0, so early training fits the coarse shape before the
fine grids can add detail (and noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Literal, Optional, Sequence, Tuple

import torch
from jaxtyping import Float
from torch import Tensor, nn


@dataclass
class HashGridConfig:
    """Hash-grid encoding of the geometry network's input (used when its `encoding` is "hash")."""

    num_levels: int = 16
    """Number of grids `L`."""
    features_per_level: int = 2
    """Features stored per grid vertex."""
    log2_hashmap_size: int = 19
    """Entries per level's hash table, as a power of two."""
    min_resolution: int = 16
    """Resolution `N_min` of the coarsest grid over the bounding cube."""
    max_resolution: int = 2048
    """Resolution `N_max` of the finest grid over the bounding cube."""
    bound: float = 1.0
    """The grids cover the cube `[-bound, bound]^3` of the training space."""
    initial_levels: int = 4
    """Levels active at step 0."""
    steps_per_level: int = 500
    """Training steps between two level activations (0: every level active from the start)."""
    implementation: Literal["tcnn", "torch"] = "tcnn"
    """tiny-cuda-nn when installed (falls back to torch otherwise), or torch."""
    quadratic_levels: int = 0
    """Coarsest levels read through quadratic B-splines (3x3x3 vertices per point, slopes continuous across cell
    faces) in place of trilinear interpolation, whose slope jumps at the cell faces show as creases in the
    surface. Torch grid and densely stored levels only."""


CORNER_OFFSETS = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
"""The 8 corners of a grid cell, as offsets from its lowest vertex."""

HASH_PRIMES = (1, 2654435761, 805459861)
"""Instant-NGP's per-axis primes of the spatial hash."""


def corner_products(x_pair: Tensor, y_pair: Tensor, z_pair: Tensor) -> Tensor:
    """Per-axis pairs `[2, *shape]` (the two values at a cell's low and high side) -> the 8 corner products
    `[8, *shape]` in `CORNER_OFFSETS` order. The corner index leads so that every product runs over the long
    point axis, not over a trailing axis of 2 (as slow as a loop on a CPU). Per-axis triples give the 27
    products of a quadratic B-spline's vertices the same way."""
    return (x_pair[:, None, None] * y_pair[None, :, None] * z_pair[None, None, :]).flatten(0, 2)


def count_dense_levels(resolutions: List[int], log2_table_size: int) -> int:
    """How many of the levels (coarse to fine) have at most one vertex per table row, and are stored densely."""
    return sum((resolution + 1) ** 3 <= 2**log2_table_size for resolution in resolutions)


def quadratic_bspline_weights(offset: Tensor) -> Tensor:
    """Uniform quadratic B-spline along one axis at `offset` in [-1/2, 1/2] from the nearest vertex `j`: the weights
    `[3, *shape]` of vertices `j - 1, j, j + 1`. They sum to 1 and reproduce linear functions; their slopes are
    continuous everywhere (the pieces meet at the cell centres, where `offset` jumps from 1/2 to -1/2)."""
    return torch.stack([(0.5 - offset).square() * 0.5, 0.75 - offset.square(), (0.5 + offset).square() * 0.5])


def quadratic_bspline_slopes(offset: Tensor) -> Tensor:
    """d/d offset of `quadratic_bspline_weights`: `[3, *shape]`."""
    return torch.stack([offset - 0.5, -2.0 * offset, offset + 0.5])


class InterpolateCorners(torch.autograd.Function):
    """`sum_c weights[c, b] * table[rows[c, b]]` for each set of weights: weighted sums of the `C` vertex rows each
    point at a level `b` reads (a cell's 8 corners, or the 27 vertices of a quadratic level), in which the features
    and their derivatives along x, y and z share the rows. The input comes in parts of their own vertex count `C`
    (the quadratic levels, then the trilinear ones), each as its rows followed by its `num_sets` weight sets, all
    vertex-major `[C, B]`; each sum goes out `[B_1 + B_2 + ..., F]`, the parts' points one after the other.

    Forward: one `embedding_bag` per weight set over every part, which reads a point's vertex rows and sums them in
    one pass, where an indexed copy `[B, C, F]` followed by a product and a sum would write and read every row
    again. Backward: each vertex's share `sum_k weights_k[c, b] * grad_k[b, f]` added into one table-sized
    gradient, and the weights' gradient (the gathered rows against the output gradient) only when the points need
    one."""

    @staticmethod
    def forward(ctx, table: Tensor, num_sets: int, *parts: Tensor) -> Tuple[Tensor, ...]:
        rows_by_part, weights_by_part = _split_parts(parts, num_sets)
        starts = _part_starts([rows.numel() for rows in rows_by_part])
        # one bag per point and level: its C vertex rows, point-major, as int32 (a table holds far fewer than 2^31 rows):
        # a CPU transposes int64 into int32 several times faster than into int64, and the gather reads half the bytes
        bags = _point_major(rows_by_part, starts, torch.int32)
        offsets = torch.cat([
            start + torch.arange(0, rows.numel(), rows.shape[0], dtype=torch.int32, device=rows.device)
            for start, rows in zip(starts, rows_by_part)
        ])
        sums = tuple(
            torch.nn.functional.embedding_bag(
                bags, table, offsets, mode="sum",
                per_sample_weights=_point_major([weights[k] for weights in weights_by_part], starts, table.dtype),
            )
            for k in range(num_sets)
        )
        ctx.num_sets = num_sets
        ctx.save_for_backward(table, *parts)
        return sums

    @staticmethod
    def backward(ctx, *grads: Tensor):
        table, *parts = ctx.saved_tensors
        rows_by_part, weights_by_part = _split_parts(parts, ctx.num_sets)
        point_starts = _part_starts([rows.shape[1] for rows in rows_by_part])
        grads_by_part = [
            [grad[start : start + rows.shape[1]].T.contiguous() for grad in grads]  # [F, B] each
            for start, rows in zip(point_starts, rows_by_part)
        ]
        grad_table = None
        if ctx.needs_input_grad[0]:
            grad_table = torch.zeros_like(table)
            for rows, weight_sets, part_grads in zip(rows_by_part, weights_by_part, grads_by_part):
                # [C, F, B]: each vertex's share of each feature's gradient, summed over the weight sets in place
                shares = weight_sets[0][:, None] * part_grads[0][None]
                for weights, grad in zip(weight_sets[1:], part_grads[1:]):
                    shares.addcmul_(weights[:, None], grad[None])
                flat_rows = rows.reshape(-1)
                if table.shape[1] == 2 and table.device.type == "cpu" and not torch.is_grad_enabled():
                    # two features per row read as one complex number: one pass adds whole rows, where a pass per
                    # feature would scatter into the table's strided columns (docs/speed.md, "Hash grid")
                    shares_by_row = shares.permute(0, 2, 1).contiguous()  # [C, B, 2]
                    torch.view_as_complex(grad_table).index_add_(0, flat_rows, torch.view_as_complex(shares_by_row).reshape(-1))
                else:
                    for feature in range(table.shape[1]):
                        grad_table[:, feature].scatter_add_(0, flat_rows, shares[:, feature].reshape(-1))
        grad_parts = []
        for part, (rows, part_grads) in enumerate(zip(rows_by_part, grads_by_part)):
            grad_parts.append(None)  # the rows
            # inputs: table, num_sets, then per part its rows and its num_sets weight sets
            first_weights = 2 + part * (1 + ctx.num_sets) + 1
            if any(ctx.needs_input_grad[first_weights : first_weights + ctx.num_sets]):
                vertex_rows = table[rows].permute(2, 0, 1)  # [F, C, B]
                grad_parts += [(vertex_rows * grad[:, None]).sum(dim=0) for grad in part_grads]
            else:
                grad_parts += [None] * ctx.num_sets
        return (grad_table, None, *grad_parts)


def _split_parts(parts: Sequence[Tensor], num_sets: int) -> Tuple[List[Tensor], List[List[Tensor]]]:
    """`InterpolateCorners`' flat input `rows_1, weights_1_1..K, rows_2, ...` -> the parts' rows and weight sets."""
    stride = 1 + num_sets
    return list(parts[::stride]), [list(parts[i + 1 : i + stride]) for i in range(0, len(parts), stride)]


def _point_major(vertex_major: Sequence[Tensor], starts: Sequence[int], dtype: torch.dtype) -> Tensor:
    """Parts `[C, B]` -> one flat tensor of their transposes `[B, C]`, one after the other, in `dtype`."""
    flat = torch.empty(starts[-1] + vertex_major[-1].numel(), dtype=dtype, device=vertex_major[0].device)
    for start, part in zip(starts, vertex_major):
        flat[start : start + part.numel()].view(part.shape[::-1]).copy_(part.T)
    return flat


def _part_starts(sizes: Sequence[int]) -> List[int]:
    """Where each of consecutive pieces of `sizes` starts."""
    return [sum(sizes[:i]) for i in range(len(sizes))]


def interpolate_vertices(table: Tensor, parts: Sequence[Tuple[Tensor, Sequence[Tensor]]]) -> Tuple[Tensor, ...]:
    """`InterpolateCorners` of `parts`, each `(rows [C, B], weight sets [C, B] ...)`, every part with the same
    number of weight sets: the sums `[B_1 + B_2 + ..., F]`, one per weight set."""
    num_sets = len(parts[0][1])
    flat = [tensor for rows, weight_sets in parts for tensor in (rows, *weight_sets)]
    return InterpolateCorners.apply(table, num_sets, *flat)


def axis_second_differences(vertices: Tensor, axis: int) -> Tensor:
    """`V(v + e) - 2 V(v) + V(v - e)` along one axis of a level's vertices `[side, side, side, F]`, at the inner ones."""
    inner = vertices.shape[axis] - 2
    second = vertices.narrow(axis, 1, inner) * -2.0
    second += vertices.narrow(axis, 0, inner)
    second += vertices.narrow(axis, 2, inner)
    return second


class SecondDifferenceEnergy(torch.autograd.Function):
    """`sum_l sum_axis mean_v ||V(v + e_axis) - 2 V(v) + V(v - e_axis)||^2` over dense levels of a grid's table, the
    features `V` at each level's vertices (the level's rows from `start`, `side^3` of them, indexed `(i, j, k)`).

    The backward is written out, `2 D^T D V / n` per axis (the difference spread back onto the three vertices it
    read), into one table-sized gradient: under autograd each of the nine slices per level would allocate and sum
    a gradient of the whole level."""

    @staticmethod
    def forward(ctx, table: Tensor, sides: Tuple[int, ...], starts: Tuple[int, ...]) -> Tensor:
        ctx.save_for_backward(table)
        ctx.levels = tuple(zip(sides, starts))
        energy = table.new_zeros(())
        for side, start in ctx.levels:
            vertices = table[start : start + side**3].view(side, side, side, -1)
            for axis in range(3):
                second = axis_second_differences(vertices, axis)
                energy += second.square().sum() / (second.numel() // second.shape[-1])
        return energy

    @staticmethod
    def backward(ctx, grad_energy: Tensor):
        (table,) = ctx.saved_tensors
        grad_table = torch.zeros_like(table)
        for side, start in ctx.levels:
            vertices = table[start : start + side**3].view(side, side, side, -1)
            grad_vertices = grad_table[start : start + side**3].view(side, side, side, -1)
            for axis in range(3):
                inner = side - 2
                second = axis_second_differences(vertices, axis)
                second *= 2.0 * grad_energy / (second.numel() // second.shape[-1])
                grad_vertices.narrow(axis, 0, inner).add_(second)
                grad_vertices.narrow(axis, 2, inner).add_(second)
                grad_vertices.narrow(axis, 1, inner).add_(second, alpha=-2.0)
        return grad_table, None, None


class MultiResolutionGrid(nn.Module):
    """Multi-resolution grid features in torch: `[0, 1]^3 -> [L * F]`, trilinear within each level (the first
    `quadratic_levels`, dense ones, through quadratic B-splines).

    Levels are ordered coarse to fine, so the densely indexed ones come first. The row of each of a
    cell's 8 corners is built from per-axis terms of its lowest vertex, never from 8 x 3 coordinates:
    a dense level adds constant corner offsets to the lowest vertex's row, a hashed level XORs the two
    values each axis can take. Weights and rows are laid out corner by level by point, so each operation
    runs along the points, and all levels and corners are read in one `InterpolateCorners`. This is what
    makes the grid usable on a CPU.
    """

    def __init__(
        self,
        resolutions: List[int],
        features_per_level: int,
        log2_table_size: int,
        init_scale: float = 1e-4,
        quadratic_levels: int = 0,
    ):
        super().__init__()
        if list(resolutions) != sorted(resolutions):
            raise ValueError(f"grid resolutions must grow from level to level, got {resolutions}")
        table_size = 2**log2_table_size
        vertices = [(resolution + 1) ** 3 for resolution in resolutions]
        sizes = [min(count, table_size) for count in vertices]
        self.table_size = table_size
        self.num_dense = count_dense_levels(resolutions, log2_table_size)
        if not 0 <= quadratic_levels <= self.num_dense:
            raise ValueError(
                f"quadratic_levels={quadratic_levels}: only the {self.num_dense} densely stored levels of this grid "
                f"(resolutions {resolutions}, 2^{log2_table_size} rows per level) can be read through B-splines"
            )
        self.num_quadratic = quadratic_levels
        offsets = torch.tensor([0] + sizes[:-1], dtype=torch.long).cumsum(0)
        strides = torch.tensor(resolutions, dtype=torch.long) + 1
        # dense level: row of corner (i, j, k) = row of the lowest vertex + (i * stride + j) * stride + k
        dense_corner_rows = (CORNER_OFFSETS[:, 0, None] * strides + CORNER_OFFSETS[:, 1, None]) * strides + CORNER_OFFSETS[:, 2, None]
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.float32), persistent=False)
        self.register_buffer("hashed", torch.tensor([count > table_size for count in vertices]), persistent=False)
        self.register_buffer("level_sizes", torch.tensor(sizes, dtype=torch.long), persistent=False)
        self.register_buffer("level_offsets", offsets, persistent=False)
        self.register_buffer("strides", strides, persistent=False)
        self.register_buffer("dense_corner_rows", dense_corner_rows + offsets, persistent=False)  # [8, L]
        # (side, first row) of each dense level as Python ints: the smoothness term slices the table with them
        # without reading a device buffer on the host
        self.dense_levels = [(int(side), int(start)) for side, start in zip(strides[: self.num_dense], offsets[: self.num_dense])]
        self.table = nn.Parameter((torch.rand(sum(sizes), features_per_level) * 2 - 1) * init_scale)

    def corner_rows(self, lowest: Tensor, first_level: int = 0) -> Tensor:
        """Table rows of the 8 corners of the cells whose lowest vertices are `lowest` `[3, L', N]`, at the levels
        from `first_level` on -> `[8, L', N]`."""
        rows = []
        num_dense = self.num_dense - first_level
        if num_dense > 0:
            x, y, z = lowest[:, :num_dense]
            stride = self.strides[first_level : self.num_dense, None]
            lowest_row = (x * stride + y) * stride + z  # [Ld, N]
            rows.append(lowest_row + self.dense_corner_rows[:, first_level : self.num_dense, None])
        if num_dense < lowest.shape[1]:
            vertex = lowest[:, num_dense:]
            # per axis, the hash terms of the two values the corner coordinate takes: [2, Lh, N]
            x_terms, y_terms, z_terms = (torch.stack([vertex[axis], vertex[axis] + 1]) * prime for axis, prime in enumerate(HASH_PRIMES))
            hashed = (x_terms[:, None, None] ^ y_terms[None, :, None] ^ z_terms[None, None, :]).flatten(0, 2)
            # the table size is a power of two: the modulo is a mask
            rows.append((hashed & (self.table_size - 1)) + self.level_offsets[self.num_dense :, None])
        return torch.cat(rows, dim=1) if len(rows) > 1 else rows[0]

    def second_difference_energy(self, num_levels: int) -> Float[Tensor, ""]:
        """`SecondDifferenceEnergy` of the first `num_levels` levels (dense ones only): how far each level's
        features are from varying linearly across its cells. Trilinear interpolation turns a level's second
        differences into jumps of the features' slope at its cell faces."""
        levels = self.dense_levels[:num_levels]
        if not levels:
            return self.table.new_zeros(())
        sides, starts = zip(*levels)
        return SecondDifferenceEnergy.apply(self.table, sides, starts)

    def forward(self, unit_points: Float[Tensor, "num_points 3"]) -> Float[Tensor, "num_points num_features"]:
        return self.forward_with_jacobian(unit_points, with_jacobian=False)[0]

    def forward_with_jacobian(
        self, unit_points: Float[Tensor, "num_points 3"], with_jacobian: bool = True
    ) -> Tuple[Float[Tensor, "num_points num_features"], Optional[Float[Tensor, "num_points num_features 3"]]]:
        """The features and, when asked, their derivatives with respect to the unit-cube point: within a
        cell, the derivative of a trilinear weight along an axis is that axis' pair `(1 - f, f)` replaced by
        `(-1, 1)`, times the level's resolution (cells per unit).

        Outside autograd (rendering, meshing, the samplers) the points are taken `query_chunk_size` at a time:
        the corner rows and weights are a few kilobytes per point, so an evaluation chunk of millions of points
        would otherwise hold gigabytes at once. Training keeps them for the backward pass anyway, in one
        piece."""
        if torch.is_grad_enabled() or unit_points.shape[0] <= self.query_chunk_size:
            return self._features_and_jacobian(unit_points, with_jacobian)
        pieces = [self._features_and_jacobian(chunk, with_jacobian) for chunk in unit_points.split(self.query_chunk_size)]
        features = torch.cat([piece[0] for piece in pieces])
        return features, torch.cat([piece[1] for piece in pieces]) if with_jacobian else None

    query_chunk_size: int = 1 << 16
    """Points per piece of a query outside autograd."""

    def _features_and_jacobian(
        self, unit_points: Float[Tensor, "num_points 3"], with_jacobian: bool
    ) -> Tuple[Float[Tensor, "num_points num_features"], Optional[Float[Tensor, "num_points num_features 3"]]]:
        num_points, num_quadratic = unit_points.shape[0], self.num_quadratic
        scaled = unit_points.T[:, None, :] * self.resolutions[:, None]  # [3, L, N], in cells of each level
        parts = []  # (rows [C, levels, N], weight sets [C, levels, N]) of the B-spline levels, then the trilinear ones
        if num_quadratic > 0:
            parts.append(self._quadratic_rows_and_weights(scaled[:, :num_quadratic], with_jacobian))
        if num_quadratic < scaled.shape[1]:
            parts.append(self._trilinear_rows_and_weights(scaled[:, num_quadratic:], with_jacobian))
        sums = interpolate_vertices(
            self.table, [(rows.flatten(1), [weights.to(self.table.dtype).flatten(1) for weights in weight_sets]) for rows, weight_sets in parts]
        )
        # level-major sums [L * N, F] -> point-major [N, L, F]
        sums = [level_sums.view(-1, num_points, level_sums.shape[-1]).transpose(0, 1) for level_sums in sums]
        features = sums[0].flatten(1)
        if not with_jacobian:
            return features, None
        jacobian = torch.stack(sums[1:], dim=-1).flatten(1, 2)  # [N, L * F, 3]
        return features, jacobian

    def _trilinear_rows_and_weights(self, scaled: Tensor, with_jacobian: bool) -> Tuple[Tensor, List[Tensor]]:
        """The 8 corner rows `[8, L', N]` of the cells holding `scaled` `[3, L', N]` (the last `L'` levels) and the
        trilinear weights, followed by their derivatives along x, y and z when asked."""
        first_level = self.resolutions.shape[0] - scaled.shape[1]
        resolutions = self.resolutions[first_level:, None]  # [L', 1]
        lowest = torch.floor(scaled).clamp(max=resolutions - 1)
        fraction = scaled - lowest  # [3, L', N], in [0, 1]
        # per axis, the trilinear factors of the low and high corner: (1 - fraction, fraction)
        pairs = [torch.stack([1.0 - fraction[axis], fraction[axis]]) for axis in range(3)]  # 3 x [2, L', N]
        weight_sets = [corner_products(*pairs)]
        if with_jacobian:
            # d/d axis of a corner's weight: that axis' pair becomes (-1, 1), times the cells per unit
            slope = torch.stack([-resolutions, resolutions]).expand_as(pairs[0])
            weight_sets += [corner_products(*[slope if axis == wrt else pair for axis, pair in enumerate(pairs)]) for wrt in range(3)]
        return self.corner_rows(lowest.long(), first_level), weight_sets

    def _quadratic_rows_and_weights(self, scaled: Tensor, with_jacobian: bool) -> Tuple[Tensor, List[Tensor]]:
        """The 27 rows `[27, L', N]` of the vertices around the nearest one to `scaled` `[3, L', N]` (the first `L'`
        levels, all dense) and their quadratic B-spline weights, followed by their derivatives when asked. Vertices
        beyond the grid's faces read the face's vertex (the spline is C1 inside the cube)."""
        num_levels = scaled.shape[1]
        resolutions = self.resolutions[:num_levels, None]  # [L', 1]
        nearest = torch.floor(scaled + 0.5)
        offset = scaled - nearest  # [3, L', N], in [-1/2, 1/2]
        stride = self.strides[:num_levels, None]
        vertex = (nearest.long()[:, None] + torch.arange(-1, 2, device=scaled.device)[:, None, None])  # [3, 3, L', N]
        x, y, z = torch.minimum(vertex.clamp(min=0), stride - 1)
        rows = ((x[:, None, None] * stride + y[None, :, None]) * stride + z[None, None, :]).flatten(0, 2)
        rows = rows + self.level_offsets[:num_levels, None]
        bases = [quadratic_bspline_weights(offset[axis]) for axis in range(3)]  # 3 x [3, L', N]
        weight_sets = [corner_products(*bases)]
        if with_jacobian:
            slopes = [quadratic_bspline_slopes(offset[axis]) * resolutions for axis in range(3)]
            weight_sets += [corner_products(*[slopes[axis] if axis == wrt else bases[axis] for axis in range(3)]) for wrt in range(3)]
        return rows, weight_sets


GRID_PARAMETER_KEYS = {"tcnn": "grids.tcnn_encoding.params", "torch": "grids.table"}
"""Where each backend keeps the grids' parameters in a `ProgressiveHashEncoding`'s state dict."""

BACKEND_NAMES = {"tcnn": "tiny-cuda-nn", "torch": "the torch grid"}


class ProgressiveHashEncoding(nn.Module):
    """`x -> [x, masked hash features]` with coarse-to-fine activation of the levels."""

    def __init__(self, config: HashGridConfig) -> None:
        super().__init__()
        from nerfstudio.field_components.encodings import TCNN_EXISTS, HashEncoding

        self.config = config
        resolutions = [self.level_resolution(level) for level in range(config.num_levels)]
        if config.quadratic_levels > 0:
            self._check_quadratic_levels_apply(resolutions, use_tcnn=config.implementation == "tcnn" and TCNN_EXISTS)
        if config.implementation == "tcnn" and TCNN_EXISTS:
            self.grids: nn.Module = HashEncoding(
                num_levels=config.num_levels,
                min_res=config.min_resolution,
                max_res=config.max_resolution,
                log2_hashmap_size=config.log2_hashmap_size,
                features_per_level=config.features_per_level,
                implementation="tcnn",
            )
        else:
            self.grids = MultiResolutionGrid(
                resolutions, config.features_per_level, config.log2_hashmap_size, quadratic_levels=config.quadratic_levels
            )
        initial = config.num_levels if config.steps_per_level <= 0 else min(config.initial_levels, config.num_levels)
        self.register_buffer("active_levels", torch.tensor(initial, dtype=torch.long))
        cell_sizes = [2.0 * config.bound / self.level_resolution(level) for level in range(config.num_levels)]
        self.register_buffer("cell_sizes", torch.tensor(cell_sizes), persistent=False)

    def get_out_dim(self) -> int:
        return 3 + self.config.num_levels * self.config.features_per_level

    def _check_quadratic_levels_apply(self, resolutions: List[int], use_tcnn: bool) -> None:
        from neurecon_ns.errors import UserInputError

        config = self.config
        setting = "--pipeline.model.networks.geometry.hash-grid.quadratic-levels"
        if use_tcnn:
            raise UserInputError(
                f"{setting} {config.quadratic_levels} reads the torch grid's tables, and tiny-cuda-nn builds this grid: "
                "add --pipeline.model.networks.geometry.hash-grid.implementation torch, or set it to 0."
            )
        num_dense = count_dense_levels(resolutions, config.log2_hashmap_size)
        if config.quadratic_levels > num_dense:
            raise UserInputError(
                f"{setting} is {config.quadratic_levels}, but this grid (resolutions {resolutions}, 2^{config.log2_hashmap_size} "
                f"rows per level) stores only its {num_dense} coarsest level{'' if num_dense == 1 else 's'} densely: "
                f"set it to at most {num_dense}."
            )

    @property
    def backend(self) -> str:
        """"tcnn" or "torch": which implementation holds the grids in this process."""
        return "torch" if isinstance(self.grids, MultiResolutionGrid) else "tcnn"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        """A checkpoint of the other backend is refused in one sentence: tiny-cuda-nn stores all levels in one
        flat vector in its own order, the torch grid one table of rows, and nerfstudio's loader would retry
        without `strict` and leave the grid untrained, giving a wrong mesh without an error."""
        trained_with = next((backend for backend, key in GRID_PARAMETER_KEYS.items() if prefix + key in state_dict), None)
        if trained_with is not None and trained_with != self.backend:
            from neurecon_ns.errors import UserInputError

            if trained_with == "tcnn":
                fix = "install tiny-cuda-nn's PyTorch bindings (nerfstudio's installation guide) to load it"
            else:
                fix = "set `implementation: torch` under hash_grid in the run's config.yml to load it with the torch grid"
            raise UserInputError(
                f"the checkpoint's hash grid was trained with {BACKEND_NAMES[trained_with]} but this process builds "
                f"{BACKEND_NAMES[self.backend]}, whose parameters are laid out differently: {fix}."
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def level_resolution(self, level: int) -> int:
        """`N_l = floor(N_min * b^l)` of level `l` (0-based)."""
        config = self.config
        if config.num_levels == 1:
            return config.min_resolution
        growth = math.exp((math.log(config.max_resolution) - math.log(config.min_resolution)) / (config.num_levels - 1))
        return int(math.floor(config.min_resolution * growth**level))

    def finest_active_cell(self) -> Tensor:
        """Edge length of a cell of the finest active grid, in training-space units (a 0-d tensor on the grid's
        device: reading the active level on the host would wait for the device at every call)."""
        return self.cell_sizes.gather(0, (self.active_levels - 1).reshape(1))[0]  # not `[tensor]`: a host read

    def update_to_step(self, step: int) -> None:
        config = self.config
        if config.steps_per_level > 0:
            active = min(config.num_levels, config.initial_levels + step // config.steps_per_level)
            self.active_levels.fill_(active)

    def forward(self, points: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs out_dim"]:
        config = self.config
        unit_cube = ((points / config.bound + 1.0) / 2.0).clamp(0.0, 1.0)
        features = self.grids(unit_cube.reshape(-1, 3)).reshape(*points.shape[:-1], -1).to(points.dtype)
        return torch.cat([points, features * self.active_feature_mask(points)], dim=-1)

    def active_feature_mask(self, like: Tensor) -> Tensor:
        """1 for the features of active levels, 0 for the others: `[L * F]`."""
        config = self.config
        level = torch.arange(config.num_levels, device=like.device).repeat_interleave(config.features_per_level)
        return (level < self.active_levels).to(like.dtype)

    def coarse_level_roughness(self, num_levels: int) -> Float[Tensor, ""]:
        """`MultiResolutionGrid.second_difference_energy` of the coarsest `num_levels` levels (torch grid only:
        tiny-cuda-nn lays its levels out in its own order)."""
        if self.backend != "torch":
            raise TypeError("the grid smoothness term reads the torch grid's tables; tiny-cuda-nn's are laid out in its own order")
        return self.grids.second_difference_energy(num_levels)

    @property
    def has_jacobian(self) -> bool:
        """The torch grid has a closed-form Jacobian; tiny-cuda-nn's does not expose one."""
        return isinstance(self.grids, MultiResolutionGrid)

    def forward_with_jacobian(
        self, points: Float[Tensor, "num_points 3"]
    ) -> Tuple[Float[Tensor, "num_points out_dim"], Float[Tensor, "num_points out_dim 3"]]:
        """The encoding and its derivative with respect to the point (outside the grid's cube, where the
        point is clamped to the cube, the features do not change)."""
        config = self.config
        unit_cube = (points / config.bound + 1.0) / 2.0
        inside = ((unit_cube >= 0.0) & (unit_cube <= 1.0)).to(points.dtype)  # [N, 3]
        features, feature_jacobian = self.grids.forward_with_jacobian(unit_cube.clamp(0.0, 1.0))
        mask = self.active_feature_mask(points)
        # d unit_cube / d point = 1 / (2 bound) on each axis inside the cube
        feature_jacobian = feature_jacobian * (mask[:, None] * inside[:, None, :] / (2.0 * config.bound))
        identity = torch.eye(3, device=points.device, dtype=points.dtype).expand(points.shape[0], 3, 3)
        return torch.cat([points, features * mask], dim=-1), torch.cat([identity, feature_jacobian], dim=1)


def reference_grid_features(grid: MultiResolutionGrid, unit_points: Float[Tensor, "num_points 3"]) -> Tensor:
    """`MultiResolutionGrid.forward` written out level by level and vertex by vertex (slow, for tests)."""
    per_level = []
    for level, resolution in enumerate(grid.resolutions.tolist()):
        level_features = torch.zeros(unit_points.shape[0], grid.table.shape[1], dtype=grid.table.dtype)
        scaled = unit_points * resolution
        if level < grid.num_quadratic:
            # quadratic B-spline: vertices j - 1, j, j + 1 around the nearest one, clamped to the grid
            base = torch.floor(scaled + 0.5) - 1
            spline_offset = scaled - base - 1  # in [-1/2, 1/2]
            neighbourhood = [[i, j, k] for i in range(3) for j in range(3) for k in range(3)]
        else:
            base = torch.floor(scaled).clamp(max=resolution - 1)
            neighbourhood = CORNER_OFFSETS.tolist()
        for corner in neighbourhood:
            vertex = (base.long() + torch.tensor(corner)).clamp(0, int(resolution))
            if bool(grid.hashed[level]):
                row = vertex[:, 0] * HASH_PRIMES[0]
                row = torch.bitwise_xor(row, vertex[:, 1] * HASH_PRIMES[1])
                row = torch.bitwise_xor(row, vertex[:, 2] * HASH_PRIMES[2])
            else:
                stride = int(resolution) + 1
                row = (vertex[:, 0] * stride + vertex[:, 1]) * stride + vertex[:, 2]
            row = row % grid.level_sizes[level] + grid.level_offsets[level]
            weight = torch.ones(unit_points.shape[0], dtype=grid.table.dtype)
            for axis in range(3):
                if level < grid.num_quadratic:
                    u = spline_offset[:, axis]
                    weight = weight * [(0.5 - u) ** 2 / 2, 0.75 - u**2, (0.5 + u) ** 2 / 2][corner[axis]]
                else:
                    fraction = scaled[:, axis] - base[:, axis]
                    weight = weight * (fraction if corner[axis] else 1.0 - fraction)
            level_features += weight[:, None] * grid.table[row]
        per_level.append(level_features)
    return torch.cat(per_level, dim=-1)
