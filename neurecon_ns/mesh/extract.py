"""Surface extraction from a level-set function by marching cubes, coarse to fine, in seamless blocks.

The surface is `{x : f(x) = level}` of a function that is negative inside: an SDF (NeuS, VolSDF) or the
level value whose sign flips where UNISURF's occupancy is 0.5. The fine grid has `resolution` samples per axis
spanning the box, both corners included, so sample `k = (i, j, l)` sits at
`bbox_min + k * (bbox_max - bbox_min) / (resolution - 1)`.

Coarse to fine (`extract_level_set`):

1. A hierarchy of coarse grids made of every `s`-th fine sample, `s = c, 2c, 4c, ...` (`c = coarse_factor`), the
   coarsest with 64 to 127 cells per axis. The coarsest is evaluated everywhere. On each grid, the cells whose
   corners straddle the level (`min <= level <= max`) are marked and the marks dilated by `dilation` cells, so
   that a part poking between two samples is still caught as long as it shows in a neighbouring cell. With
   `sdf_lipschitz = L` (only for a true SDF) a cell is also marked when `min_corners |f - level| <= L *
   half_diagonal`, which guarantees that no crossing is missed. The next finer grid is evaluated at the corners
   of marked cells only; its other samples take the value of the coarse sample at their cell's low corner,
   which has the sign of the (unmarked, sign-constant) coarse cell.
2. The fine grid is walked in blocks of `block_resolution` cells. In a block holding a marked cell of the finest
   coarse grid, `f` is evaluated at every fine sample of a marked cell, the rest is filled as above (it adds no
   triangle), and marching cubes runs on the block.
3. Blocks share their boundary samples. Every shared sample is evaluated once, by the first block that needs
   it, and handed to the others through a cache kept by the block that owns it, so both sides see the same
   bits. Vertices are recomputed in float64 from the values of the grid edge they lie on and welded by that
   edge (`_marching_cubes`, `_weld`, which the dense path uses too), so the merged mesh is exactly seamless.

Wherever the marked cells hold every fine crossing, the result is the dense marching cubes mesh
(`extract_level_set_dense`, the slow reference): the same faces and the same vertices, bit for bit where the
level function gives a point the same value in any batch, except Lewiner's extra vertices inside ambiguous
cubes, which differ by float32 rounding. Queries grow with
the surface area (a band a few coarse cells wide around the surface, plus the fixed coarsest grid); memory is
bounded by the finest coarse grid (at most 257^3 floats: `coarse_factor` grows with `resolution` to keep it so),
one block, the boundary caches and the output mesh.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import trimesh
from jaxtyping import Bool, Float, Int
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from skimage.measure import marching_cubes
from torch import Tensor

from neurecon_ns.errors import UserInputError

LevelFunction = Callable[[Float[Tensor, "num_points 3"]], Float[Tensor, " num_points"]]
"""Maps points (in the box's coordinates) to level-set values, negative inside."""

STATS_KEY = "extraction_stats"
"""Key of the `ExtractionStats` in `mesh.metadata` of an extracted mesh."""

BoxCorner = Union[Sequence[float], np.ndarray, Tensor]

PAD_ROWS = 64
"""Every batch of points sent to the level function is padded to a multiple of this many rows."""
MAX_COARSE_CELLS = 256
"""The finest coarse grid has at most this many cells per axis (257^3 floats = 68 MB)."""
MIN_TOP_CELLS = 64
"""The coarsest grid, evaluated everywhere, has 64 to 127 cells per axis (fewer only for small resolutions)."""


@dataclass
class ExtractionStats:
    """What an extraction cost."""

    resolution: int
    """Fine samples per axis."""
    coarse_factor: int
    """Fine cells per cell of the finest coarse grid, along an axis (1 for the dense path)."""
    coarse_resolutions: Tuple[int, ...]
    """Samples per axis of each coarse grid, coarsest first (empty for the dense path)."""
    num_coarse_queries: int
    """Points sent to the level function for the coarse grids."""
    num_fine_queries: int
    """Points sent to the level function on the fine grid."""
    blocks_visited: int
    """Blocks in which the fine grid was evaluated and meshed."""
    blocks_total: int
    """Blocks in the fine grid."""
    seconds: float
    """Wall-clock time of the whole extraction."""

    @property
    def num_queries(self) -> int:
        return self.num_coarse_queries + self.num_fine_queries

    @property
    def num_dense_queries(self) -> int:
        """Queries of the dense path at the same resolution."""
        return self.resolution**3


def extraction_stats(mesh: trimesh.Trimesh) -> ExtractionStats:
    """The statistics stored on a mesh returned by `extract_level_set` or `extract_level_set_dense`."""
    return mesh.metadata[STATS_KEY]


# ---------------------------------------------------------------------------------------------------------------------
# the grid


def _box(bbox_min: BoxCorner, bbox_max: BoxCorner, resolution: int) -> Tuple[np.ndarray, np.ndarray]:
    """`(bbox_min, spacing)` as float64 arrays, after checking what a user can get wrong."""
    lower = np.asarray(torch.as_tensor(bbox_min).detach().cpu(), dtype=np.float64).reshape(-1)
    upper = np.asarray(torch.as_tensor(bbox_max).detach().cpu(), dtype=np.float64).reshape(-1)
    if lower.shape != (3,) or upper.shape != (3,):
        raise UserInputError(f"the box corners must be 3 numbers each, got {lower.tolist()} and {upper.tolist()}.")
    if not np.all(upper > lower):
        raise UserInputError(f"the box is empty: its maximum {upper.tolist()} must exceed its minimum {lower.tolist()} on every axis.")
    if int(resolution) < 2:
        raise UserInputError(f"the resolution must be at least 2 samples per axis, got {resolution}.")
    return lower, (upper - lower) / (int(resolution) - 1)


def _index_to_world(
    index: Float[np.ndarray, "*bs 3"], bbox_min: Float[np.ndarray, "3"], spacing: Float[np.ndarray, "3"]
) -> Float[np.ndarray, "*bs 3"]:
    """`x = bbox_min + k * spacing`; the one formula every path uses, so equal indices give equal points."""
    return bbox_min + index * spacing


def _lattice(axis_x: np.ndarray, axis_y: np.ndarray, axis_z: np.ndarray) -> Int[np.ndarray, "num 3"]:
    """All index triples of the product of three index ranges, x slowest."""
    grid = np.meshgrid(axis_x, axis_y, axis_z, indexing="ij")
    return np.stack([g.reshape(-1) for g in grid], axis=-1)


class _CountingField:
    """Evaluates a level function on float64 numpy points in chunks, counts the queries, rejects NaN."""

    def __init__(self, level_fn: LevelFunction, device: Union[str, torch.device], chunk_size: int) -> None:
        self.level_fn = level_fn
        self.device = torch.device(device)
        self.chunk_size = int(chunk_size)
        self.num_queries = 0

    def __call__(self, points_world: Float[np.ndarray, "num 3"]) -> Float[np.ndarray, " num"]:
        values = np.empty(len(points_world), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(points_world), self.chunk_size):
                chunk = points_world[start : start + self.chunk_size].astype(np.float32)
                # BLAS computes the rows of a short or ragged batch with other kernels, whose last bits differ;
                # padded to whole row blocks, a point gets the same value in whatever batch it comes
                padded = np.zeros((-(-len(chunk) // PAD_ROWS) * PAD_ROWS, 3), dtype=np.float32)
                padded[: len(chunk)] = chunk
                level = self.level_fn(torch.from_numpy(padded).to(self.device))
                if level.numel() != len(padded):
                    raise ValueError(f"the level function returned {tuple(level.shape)} values for {len(padded)} points; it must return one per point.")
                values[start : start + len(chunk)] = level.reshape(-1)[: len(chunk)].float().cpu().numpy()
        self.num_queries += len(points_world)
        if not np.isfinite(values).all():
            raise UserInputError(
                f"the field is NaN or infinite at {int((~np.isfinite(values)).sum())} of {len(values)} sampled points: "
                "the model has diverged; use an earlier checkpoint or retrain."
            )
        return values


def _check_crossing(values: np.ndarray, level: float, where: str) -> None:
    """Raise the user-facing error when the sampled field never reaches the level."""
    low, high = float(values.min()), float(values.max())
    if not low <= level <= high:
        raise UserInputError(
            f"the field never crosses level {level:g} inside the box (min {low:.3g}, max {high:.3g} over the {where}): "
            "the model has no surface there; train longer or check the bounding box."
        )


def progress_bar(enabled: bool) -> Progress:
    """A rich progress bar on stderr that disappears when done (nothing shows when `enabled` is false)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )


def _dense_values(
    field: _CountingField, bbox_min: np.ndarray, spacing: np.ndarray, stride: int, num_samples: int
) -> Float[np.ndarray, "n n n"]:
    """The field at the samples `k * stride`, `0 <= k < num_samples` per axis, in x-slabs of about a chunk."""
    values = np.empty((num_samples,) * 3, dtype=np.float32)
    slab_index = _lattice(np.zeros(1, dtype=np.int64), np.arange(num_samples), np.arange(num_samples))
    slabs_per_chunk = max(1, field.chunk_size // num_samples**2)
    for x_start in range(0, num_samples, slabs_per_chunk):
        x_stop = min(x_start + slabs_per_chunk, num_samples)
        index = np.concatenate([slab_index + [x, 0, 0] for x in range(x_start, x_stop)])
        points = _index_to_world(index * stride, bbox_min, spacing)
        values[x_start:x_stop] = field(points).reshape(x_stop - x_start, num_samples, num_samples)
    return values


# ---------------------------------------------------------------------------------------------------------------------
# marching cubes and welding


@dataclass
class _Piece:
    """Marching cubes of one volume, its vertices made independent of where the volume starts."""

    positions: Float[np.ndarray, "num_vertices 3"]
    """Vertices in fine-grid index units (float64)."""
    keys: Int[np.ndarray, " num_vertices"]
    """Grid edge or sample each vertex lies on; negative for vertices inside a cube."""
    faces: Int[np.ndarray, "num_faces 3"]


def _snap_tolerance(resolution: int) -> float:
    """Crossings closer than this (in voxels) to a sample are on it. skimage writes vertices in float32, so in
    a grid of `resolution` samples a crossing that close may already have been rounded onto the sample."""
    return 2.0 * float(np.finfo(np.float32).eps) * max(int(resolution), 16)


def _sample_keys(index: Int[np.ndarray, "num 3"], side: int) -> Int[np.ndarray, " num"]:
    return ((index[:, 0] * side + index[:, 1]) * side + index[:, 2]) * 4 + 3


def _marching_cubes(
    volume: Float[np.ndarray, "nx ny nz"], level: float, offset: Int[np.ndarray, "3"], resolution: int
) -> Optional[_Piece]:
    """Marching cubes (Lewiner) of a volume whose sample `(0, 0, 0)` is fine sample `offset`; None when the
    level is not crossed.

    skimage returns float32 vertices in the volume's own index units, so their rounding depends on where the
    volume starts. Each vertex is therefore recomputed from the two values of its grid edge in float64,
    `x = k + (level - f_k) / (f_{k+1} - f_k)` along the edge, which every volume holding that edge computes
    bit for bit alike, and keyed by the edge; a crossing within `_snap_tolerance` of a sample is put on the
    sample and keyed by it, so that the vertices of all edges meeting there merge. Lewiner's extra vertices
    inside ambiguous cubes (two or three fractional coordinates) keep skimage's position.
    """
    if not volume.min() <= level <= volume.max():
        return None
    try:
        vertices, faces, _, _ = marching_cubes(volume, level=level, allow_degenerate=True)
    except RuntimeError:  # touches the level without crossing it
        return None
    vertices = vertices.astype(np.float64)
    rounded = np.rint(vertices)
    fractional = vertices != rounded
    num_fractional = fractional.sum(axis=1)
    side = int(resolution) + 1
    positions = vertices + offset
    keys = np.full(len(vertices), -1, dtype=np.int64)

    on_sample = num_fractional == 0
    keys[on_sample] = _sample_keys(rounded[on_sample].astype(np.int64) + offset, side)
    positions[on_sample] = rounded[on_sample] + offset

    on_edge = np.flatnonzero(num_fractional == 1)
    axis = np.argmax(fractional[on_edge], axis=1)
    low = np.floor(vertices[on_edge]).astype(np.int64)
    high = low.copy()
    high[np.arange(len(on_edge)), axis] += 1
    value_low = volume[low[:, 0], low[:, 1], low[:, 2]].astype(np.float64)
    value_high = volume[high[:, 0], high[:, 1], high[:, 2]].astype(np.float64)
    step = value_high - value_low
    t = np.clip(np.divide(level - value_low, step, out=np.zeros_like(step), where=step != 0), 0.0, 1.0)
    tolerance = _snap_tolerance(resolution)
    at_low, at_high = t <= tolerance, t >= 1.0 - tolerance
    edge_positions = low.astype(np.float64)
    edge_positions[np.arange(len(on_edge)), axis] += np.where(at_low, 0.0, np.where(at_high, 1.0, t))
    edge_keys = ((low[:, 0] + offset[0]) * side + low[:, 1] + offset[1]) * side + low[:, 2] + offset[2]
    edge_keys = edge_keys * 4 + axis
    edge_keys[at_low] = _sample_keys(low[at_low] + offset, side)
    edge_keys[at_high] = _sample_keys(high[at_high] + offset, side)
    positions[on_edge] = edge_positions + offset
    keys[on_edge] = edge_keys
    return _Piece(positions, keys, faces.astype(np.int64))


def _weld(pieces: Sequence[_Piece]) -> Tuple[Float[np.ndarray, "num_vertices 3"], Int[np.ndarray, "num_faces 3"]]:
    """One mesh from the pieces: vertices with the same key merged, faces that collapse dropped.

    Blocks compute the vertices of a shared edge from the same values, so merging by key leaves no seam.
    """
    keys = np.concatenate([piece.keys for piece in pieces])
    inside_cube = keys < 0
    keys[inside_cube] = -1 - np.arange(int(inside_cube.sum()))  # never merged
    offsets = np.cumsum([0] + [len(piece.keys) for piece in pieces[:-1]])
    faces = np.concatenate([piece.faces + offset for piece, offset in zip(pieces, offsets)])
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    welded_faces = inverse.reshape(-1)[faces]
    distinct = (
        (welded_faces[:, 0] != welded_faces[:, 1])
        & (welded_faces[:, 1] != welded_faces[:, 2])
        & (welded_faces[:, 0] != welded_faces[:, 2])
    )
    positions = np.concatenate([piece.positions for piece in pieces])
    return positions[first], welded_faces[distinct]


def _mesh_from_index_vertices(
    vertices_index: Float[np.ndarray, "num_vertices 3"],
    faces: Int[np.ndarray, "num_faces 3"],
    bbox_min: np.ndarray,
    spacing: np.ndarray,
    stats: ExtractionStats,
) -> trimesh.Trimesh:
    mesh = trimesh.Trimesh(_index_to_world(vertices_index, bbox_min, spacing), faces, process=False)
    mesh.metadata[STATS_KEY] = stats
    return mesh


# ---------------------------------------------------------------------------------------------------------------------
# dense reference


def extract_level_set_dense(
    level_fn: LevelFunction,
    bbox_min: BoxCorner,
    bbox_max: BoxCorner,
    resolution: int,
    level: float = 0.0,
    device: Union[str, torch.device] = "cpu",
    chunk_size: int = 2**18,
    progress: bool = False,
) -> trimesh.Trimesh:
    """Reference path: evaluate every one of the `resolution**3` samples, run marching cubes once.

    Memory is `4 * resolution**3` bytes for the grid (0.5 GiB at 512), which is what the coarse-to-fine path
    avoids; use this one for tests and comparisons.
    """
    started = time.perf_counter()
    bbox_min_np, spacing = _box(bbox_min, bbox_max, resolution)
    field = _CountingField(level_fn, device, chunk_size)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"dense grid {resolution}^3", total=1)
        values = _dense_values(field, bbox_min_np, spacing, 1, resolution)
        bar.update(task, completed=1)
    _check_crossing(values, level, "dense grid")
    piece = _marching_cubes(values, level, np.zeros(3, dtype=np.int64), resolution)
    if piece is None:
        raise UserInputError(f"the field touches level {level:g} inside the box without crossing it; check the bounding box.")
    vertices_index, faces = _weld([piece])
    stats = ExtractionStats(resolution, 1, (), 0, field.num_queries, 1, 1, time.perf_counter() - started)
    return _mesh_from_index_vertices(vertices_index, faces, bbox_min_np, spacing, stats)


# ---------------------------------------------------------------------------------------------------------------------
# coarse to fine


def mark_cells(
    coarse_values: Float[np.ndarray, "nx ny nz"],
    level: float,
    dilation: int = 1,
    sdf_lipschitz: Optional[float] = None,
    cell_size: Optional[Float[np.ndarray, "3"]] = None,
) -> Bool[np.ndarray, "nx-1 ny-1 nz-1"]:
    """Coarse cells that may hold part of the surface.

    A cell is marked when its eight corner values satisfy `min <= level <= max`, or, for an SDF with Lipschitz
    constant `L = sdf_lipschitz` and cells of size `cell_size`, when `min |f - level| <= L * |cell_size| / 2`
    (any point of a cell is within half a diagonal of some corner). The marks are then dilated by `dilation`
    cells (26-neighbourhood).
    """
    corner_min, corner_max = coarse_values, coarse_values
    for axis in range(3):  # min and max over the 2x2x2 corners, one axis at a time
        low, high = _pairs(corner_min, axis)
        corner_min = np.minimum(low, high)
        low, high = _pairs(corner_max, axis)
        corner_max = np.maximum(low, high)
    marked = (corner_min <= level) & (corner_max >= level)
    if sdf_lipschitz is not None:
        if cell_size is None:
            raise ValueError("the Lipschitz bound needs the cell size")
        half_diagonal = 0.5 * float(np.linalg.norm(cell_size))
        # |f - level| is smallest at a corner where the cell does not straddle: min of max(min - level, level - max)
        distance_to_level = np.maximum(corner_min - level, level - corner_max)
        marked |= distance_to_level <= sdf_lipschitz * half_diagonal
    for _ in range(max(int(dilation), 0)):
        marked = _dilate_by_one(marked)
    return marked


def _pairs(values: np.ndarray, axis: int) -> Tuple[np.ndarray, np.ndarray]:
    """The two corners of every cell along `axis`: `values[:-1]` and `values[1:]` on that axis."""
    low = [slice(None)] * values.ndim
    high = [slice(None)] * values.ndim
    low[axis], high[axis] = slice(None, -1), slice(1, None)
    return values[tuple(low)], values[tuple(high)]


def _dilate_by_one(marked: Bool[np.ndarray, "nx ny nz"]) -> Bool[np.ndarray, "nx ny nz"]:
    """Add the 26 neighbours of every marked cell (a 3x3x3 cube is three 3-wide segments, one per axis)."""
    for axis in range(3):
        low, high = _pairs(marked, axis)
        grown = marked.copy()
        _pairs(grown, axis)[0][...] |= high
        _pairs(grown, axis)[1][...] |= low
        marked = grown
    return marked


def default_coarse_factor(resolution: int) -> int:
    """The smallest of 4, 8, 16, ... that keeps the finest coarse grid within `MAX_COARSE_CELLS` cells per axis."""
    factor = 4
    while math.ceil((int(resolution) - 1) / factor) > MAX_COARSE_CELLS:
        factor *= 2
    return factor


def coarse_levels(resolution: int, coarse_factor: int, coarsest_cells: int = MIN_TOP_CELLS) -> List[Tuple[int, int]]:
    """`(stride, num_cells)` of each coarse grid, finest first: strides `c, 2c, 4c, ...` in fine samples, until
    the grid has fewer than `2 * coarsest_cells` cells per axis. A grid may reach past the box by less than a cell."""
    levels = [(coarse_factor, math.ceil((resolution - 1) / coarse_factor))]
    while levels[-1][1] >= 2 * coarsest_cells:
        stride, num_cells = levels[-1]
        levels.append((2 * stride, math.ceil(num_cells / 2)))
    return levels


def _fill_from_coarse(
    coarse_values: np.ndarray, factor: int, start: np.ndarray, stop: np.ndarray
) -> Float[np.ndarray, "bx by bz"]:
    """Fine samples `start..stop` (inclusive) filled with the coarse value at the low corner of their coarse cell.

    Only samples of unmarked cells keep this value. An unmarked cell's corners all have one sign, and unmarked
    cells that touch share corners, so the fill has the sign the field has there and adds no triangle.
    """
    index = [np.arange(start[axis], stop[axis] + 1) // factor for axis in range(3)]
    return coarse_values[np.ix_(*index)]


def _needed_samples(
    marked_padded: np.ndarray, factor: int, start: np.ndarray, stop: np.ndarray
) -> Bool[np.ndarray, "bx by bz"]:
    """Fine samples `start..stop` (inclusive) that are a corner of some marked coarse cell.

    Sample `k` belongs to the coarse cells `(k - 1) // c` and `k // c` along each axis (the same cell unless `k`
    is a multiple of `c`); `marked_padded` has one unmarked cell on every side so both always exist.
    """
    cells = []
    for axis in range(3):
        k = np.arange(start[axis], stop[axis] + 1)
        cells.append(((k - 1) // factor + 1, k // factor + 1))
    (lo_x, hi_x), (lo_y, hi_y), (lo_z, hi_z) = cells
    window = marked_padded[lo_x[0] : hi_x[-1] + 1, lo_y[0] : hi_y[-1] + 1, lo_z[0] : hi_z[-1] + 1]
    lo_x, hi_x, lo_y, hi_y, lo_z, hi_z = lo_x - lo_x[0], hi_x - lo_x[0], lo_y - lo_y[0], hi_y - lo_y[0], lo_z - lo_z[0], hi_z - lo_z[0]
    needed = window[lo_x] | window[hi_x]
    needed = needed[:, lo_y] | needed[:, hi_y]
    return needed[:, :, lo_z] | needed[:, :, hi_z]


@dataclass
class _Refinement:
    """What every level of the coarse hierarchy needs to know."""

    field: _CountingField
    bbox_min: np.ndarray
    spacing: np.ndarray
    level: float
    dilation: int
    sdf_lipschitz: Optional[float]
    bar: Progress

    def marks(self, values: np.ndarray, stride: int) -> np.ndarray:
        return mark_cells(values, self.level, self.dilation, self.sdf_lipschitz, self.spacing * stride)


def _level_values(refinement: _Refinement, levels: List[Tuple[int, int]], index: int) -> Float[np.ndarray, "n n n"]:
    """Values of the coarse grid `levels[index]`: the field near the surface, the coarser grid's fill elsewhere."""
    stride, num_cells = levels[index]
    if index == len(levels) - 1:
        task = refinement.bar.add_task(f"coarse grid {num_cells + 1}^3", total=1)
        values = _dense_values(refinement.field, refinement.bbox_min, refinement.spacing, stride, num_cells + 1)
        refinement.bar.update(task, completed=1)
        _check_crossing(values, refinement.level, f"coarse grid of {num_cells + 1}^3 samples")
        return values
    coarse_stride, _ = levels[index + 1]
    coarse_values = _level_values(refinement, levels, index + 1)
    factor = coarse_stride // stride
    marked_padded = np.pad(refinement.marks(coarse_values, coarse_stride), 1)
    values = np.empty((num_cells + 1,) * 3, dtype=np.float32)
    # x-slabs of coarse cells, each about 2^22 samples, so that the temporaries stay small
    cells_per_slab = max(1, 2**22 // ((num_cells + 1) ** 2 * factor))
    num_coarse_cells = math.ceil(num_cells / factor)
    task = refinement.bar.add_task(f"coarse grid {num_cells + 1}^3", total=num_coarse_cells)
    written_up_to = -1
    for first_cell in range(0, num_coarse_cells, cells_per_slab):
        start = np.array([first_cell * factor, 0, 0])
        stop = np.array([min((first_cell + cells_per_slab) * factor, num_cells), num_cells, num_cells])
        volume = _fill_from_coarse(coarse_values, factor, start, stop)
        needed = _needed_samples(marked_padded, factor, start, stop)
        shared = written_up_to - start[0] + 1  # planes the previous slab has already evaluated
        if shared > 0:
            volume[:shared] = values[start[0] : start[0] + shared]
            needed[:shared] = False
        index_needed = np.argwhere(needed) + start
        if len(index_needed):
            points = _index_to_world(index_needed * stride, refinement.bbox_min, refinement.spacing)
            volume[needed] = refinement.field(points)
        values[start[0] : stop[0] + 1] = volume
        written_up_to = int(stop[0])
        refinement.bar.update(task, completed=min(first_cell + cells_per_slab, num_coarse_cells))
    return values


@dataclass
class _BlockGrid:
    """How the fine grid is cut into blocks and coarse cells (all counts per axis)."""

    resolution: int
    block_resolution: int
    coarse_factor: int

    @property
    def num_cells(self) -> int:
        return self.resolution - 1

    @property
    def num_blocks(self) -> int:
        return math.ceil(self.num_cells / self.block_resolution)

    @property
    def num_coarse_cells(self) -> int:
        return math.ceil(self.num_cells / self.coarse_factor)

    def block_range(self, block: Tuple[int, int, int]) -> Tuple[np.ndarray, np.ndarray]:
        """First and last fine sample (both included) of a block."""
        start = np.asarray(block, dtype=np.int64) * self.block_resolution
        return start, np.minimum(start + self.block_resolution, self.num_cells)

    def owner(self, index: Int[np.ndarray, "num 3"]) -> Int[np.ndarray, " num"]:
        """Flat id of the block owning each sample: the block whose half-open range holds it."""
        block = np.minimum(index // self.block_resolution, self.num_blocks - 1)
        return (block[:, 0] * self.num_blocks + block[:, 1]) * self.num_blocks + block[:, 2]

    def flat_id(self, block: Tuple[int, int, int]) -> int:
        return (block[0] * self.num_blocks + block[1]) * self.num_blocks + block[2]

    def blocks(self) -> Iterator[Tuple[int, int, int]]:
        for bx in range(self.num_blocks):
            for by in range(self.num_blocks):
                for bz in range(self.num_blocks):
                    yield bx, by, bz


class _BoundaryCache:
    """Values of block-boundary samples, kept by the block that owns them until that block has been passed.

    A sample shared by several blocks lies on the low faces of its owner, so the blocks that use it are the
    owner and blocks before it in the walk: the first of them evaluates it, the others read it here.
    """

    def __init__(self) -> None:
        self.entries: Dict[int, List[Tuple[np.ndarray, np.ndarray]]] = {}

    def lookup(self, owners: Sequence[int], keys: Int[np.ndarray, " num"]) -> Tuple[np.ndarray, np.ndarray]:
        """`(found, values)` for sample keys among the entries of the given owners."""
        stored = [entry for owner in owners for entry in self.entries.get(owner, [])]
        found = np.zeros(len(keys), dtype=bool)
        values = np.zeros(len(keys), dtype=np.float32)
        if not stored:
            return found, values
        stored_keys = np.concatenate([entry[0] for entry in stored])
        stored_values = np.concatenate([entry[1] for entry in stored])
        order = np.argsort(stored_keys)
        stored_keys, stored_values = stored_keys[order], stored_values[order]
        position = np.minimum(np.searchsorted(stored_keys, keys), len(stored_keys) - 1)
        found = stored_keys[position] == keys
        values[found] = stored_values[position[found]]
        return found, values

    def store(self, owners: Int[np.ndarray, " num"], keys: Int[np.ndarray, " num"], values: np.ndarray) -> None:
        for owner in np.unique(owners):
            mine = owners == owner
            self.entries.setdefault(int(owner), []).append((keys[mine], values[mine]))

    def release(self, owner: int) -> None:
        self.entries.pop(owner, None)


def extract_level_set(
    level_fn: LevelFunction,
    bbox_min: BoxCorner,
    bbox_max: BoxCorner,
    resolution: int,
    level: float = 0.0,
    block_resolution: int = 64,
    coarse_factor: Optional[int] = None,
    dilation: int = 1,
    sdf_lipschitz: Optional[float] = None,
    coarsest_cells: int = MIN_TOP_CELLS,
    device: Union[str, torch.device] = "cpu",
    chunk_size: int = 2**18,
    progress: bool = True,
) -> trimesh.Trimesh:
    """Mesh of `{x : level_fn(x) = level}` inside the box, coarse to fine (see the module docstring).

    Args:
        level_fn: points `[N, 3]` on `device`, in the box's coordinates -> values `[N]`, negative inside.
        bbox_min, bbox_max: corners of the box; the grid includes both.
        resolution: fine samples per axis (any value >= 2; the voxel is `(bbox_max - bbox_min) / (resolution - 1)`).
        level: the level set to extract.
        block_resolution: fine cells per block side; a multiple of `coarse_factor`.
        coarse_factor: fine cells per cell of the finest coarse grid; by default 4, or more above resolution
            1025 so that this grid keeps at most 256 cells per axis.
        dilation: coarse cells added around the cells that straddle the level, on every coarse grid.
        sdf_lipschitz: the field's Lipschitz constant if it is an SDF (1 for an exact SDF); marks cells that a
            crossing could reach, making the search exhaustive. Leave None for occupancy logits.
        coarsest_cells: the coarsest grid, evaluated everywhere, has from this to twice this many cells per axis
            (fewer when the finest coarse grid has fewer); finer features than its cells may be missed.
        device: where the query points are sent.
        chunk_size: points per call of `level_fn`.
        progress: show a progress bar on stderr.

    Returns:
        The mesh in the box's coordinates, faces oriented outwards (towards increasing values), with an
        `ExtractionStats` in `mesh.metadata[STATS_KEY]`.

    Raises:
        UserInputError: the field does not cross the level, or is NaN where it is sampled.
    """
    started = time.perf_counter()
    bbox_min_np, spacing = _box(bbox_min, bbox_max, resolution)
    resolution = int(resolution)
    coarse_factor = default_coarse_factor(resolution) if coarse_factor is None else int(coarse_factor)
    if coarse_factor < 2:
        raise UserInputError(f"the coarse factor must be at least 2, got {coarse_factor}.")
    if block_resolution < coarse_factor or block_resolution % coarse_factor:
        block_resolution = coarse_factor * max(1, round(block_resolution / coarse_factor))
    grid = _BlockGrid(resolution, int(block_resolution), coarse_factor)
    field = _CountingField(level_fn, device, chunk_size)
    levels = coarse_levels(resolution, coarse_factor, coarsest_cells)

    with progress_bar(progress) as bar:
        refinement = _Refinement(field, bbox_min_np, spacing, level, dilation, sdf_lipschitz, bar)
        coarse_values = _level_values(refinement, levels, 0)
        num_coarse_queries = field.num_queries
        marked = refinement.marks(coarse_values, coarse_factor)
        marked_padded = np.pad(marked, 1)

        cells_per_block = grid.block_resolution // grid.coarse_factor
        padded_cells = grid.num_blocks * cells_per_block
        marked_blocks = np.pad(marked, [(0, padded_cells - grid.num_coarse_cells)] * 3)
        marked_blocks = marked_blocks.reshape([grid.num_blocks, cells_per_block] * 3).any(axis=(1, 3, 5))

        cache = _BoundaryCache()
        pieces: List[_Piece] = []
        fine_task = bar.add_task(f"fine blocks ({resolution}^3)", total=int(marked_blocks.sum()))
        for block in grid.blocks():
            if marked_blocks[block]:
                volume = _evaluate_block(field, grid, block, coarse_values, marked_padded, cache, bbox_min_np, spacing)
                piece = _marching_cubes(volume, level, grid.block_range(block)[0], resolution)
                if piece is not None:
                    pieces.append(piece)
                bar.advance(fine_task)
            cache.release(grid.flat_id(block))

    if not pieces:
        low, high = float(coarse_values.min()), float(coarse_values.max())
        raise UserInputError(
            f"the field never crosses level {level:g} on the fine grid (coarse min {low:.3g}, max {high:.3g}): "
            "the model has no surface there; train longer or check the bounding box."
        )
    vertices_index, faces = _weld(pieces)
    stats = ExtractionStats(
        resolution=resolution,
        coarse_factor=coarse_factor,
        coarse_resolutions=tuple(num_cells + 1 for _, num_cells in reversed(levels)),
        num_coarse_queries=num_coarse_queries,
        num_fine_queries=field.num_queries - num_coarse_queries,
        blocks_visited=int(marked_blocks.sum()),
        blocks_total=grid.num_blocks**3,
        seconds=time.perf_counter() - started,
    )
    return _mesh_from_index_vertices(vertices_index, faces, bbox_min_np, spacing, stats)


def _evaluate_block(
    field: _CountingField,
    grid: _BlockGrid,
    block: Tuple[int, int, int],
    coarse_values: np.ndarray,
    marked_padded: np.ndarray,
    cache: _BoundaryCache,
    bbox_min: np.ndarray,
    spacing: np.ndarray,
) -> Float[np.ndarray, "bx by bz"]:
    """The block's volume for marching cubes: field values where needed, the coarse fill elsewhere."""
    start, stop = grid.block_range(block)
    volume = _fill_from_coarse(coarse_values, grid.coarse_factor, start, stop)
    needed = _needed_samples(marked_padded, grid.coarse_factor, start, stop)
    index = np.argwhere(needed) + start
    keys = (index[:, 0] * grid.resolution + index[:, 1]) * grid.resolution + index[:, 2]
    neighbours = [
        grid.flat_id((block[0] + dx, block[1] + dy, block[2] + dz))
        for dx in (0, 1)
        for dy in (0, 1)
        for dz in (0, 1)
        if max(block[0] + dx, block[1] + dy, block[2] + dz) < grid.num_blocks
    ]
    found, values = cache.lookup(neighbours, keys)
    missing = ~found
    if missing.any():
        values[missing] = field(_index_to_world(index[missing], bbox_min, spacing))
        owners = grid.owner(index[missing])
        shared = owners != grid.flat_id(block)
        if shared.any():
            cache.store(owners[shared], keys[missing][shared], values[missing][shared])
    volume[needed] = values
    return volume
