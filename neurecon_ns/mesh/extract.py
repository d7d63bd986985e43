"""Surface extraction from a level-set function by marching cubes, coarse to fine, in seamless blocks.

The surface is `{x : f(x) = level}` of a function that is negative inside: an SDF (NeuS, VolSDF) or a
negated occupancy logit (UNISURF). The fine grid has `resolution` samples per axis spanning the box,
both corners included, so sample `k = (i, j, l)` sits at `bbox_min + k * (bbox_max - bbox_min) / (resolution - 1)`.

Coarse to fine (`extract_level_set`):

1. Evaluate `f` on a coarse grid made of every `coarse_factor`-th fine sample.
2. Mark the coarse cells whose corners straddle the level (`min <= level <= max`), then dilate the marks by
   `dilation` cells, so that a thin part poking between two coarse samples is still caught as long as it
   shows up in a neighbouring cell. With `sdf_lipschitz = L` (only for a true SDF), a cell is also marked
   when `min_corners |f - level| <= L * half_diagonal`, which then guarantees that no crossing is missed.
3. Walk the fine grid in blocks of `block_resolution` cells. In a block with a marked cell, evaluate `f` at
   every fine sample of a marked cell; fill the other samples with the trilinear interpolation of the coarse
   values, which has the sign of the (unmarked, sign-constant) coarse cell and so adds no triangle. Run
   marching cubes on the block.
4. Blocks share their boundary samples. Every shared sample is evaluated once, by the first block that needs
   it, and handed to the others through a cache kept by the block that owns it, so both sides see the same
   bits. Vertices are merged by the grid edge they lie on, which makes the merged mesh exactly seamless.

Wherever the marked cells hold every fine crossing, the result is the dense marching cubes mesh
(`extract_level_set_dense`), up to float rounding of the vertex positions. Memory is bounded: the coarse
grid, one block, the boundary caches (at most a few `resolution**2` floats) and the output mesh.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import trimesh
from jaxtyping import Bool, Float, Int
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import marching_cubes
from torch import Tensor

from neurecon_ns.errors import UserInputError

LevelFunction = Callable[[Float[Tensor, "num_points 3"]], Float[Tensor, "num_points"]]
"""Maps points (in the box's coordinates) to level-set values, negative inside."""

STATS_KEY = "extraction_stats"
"""Key of the `ExtractionStats` in `mesh.metadata` of an extracted mesh."""

BoxCorner = Union[Sequence[float], np.ndarray, Tensor]


@dataclass
class ExtractionStats:
    """What an extraction cost."""

    resolution: int
    """Fine samples per axis."""
    coarse_factor: int
    """Fine cells per coarse cell along an axis (1 for the dense path)."""
    num_coarse_queries: int
    """Points sent to the level function for the coarse grid."""
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
        raise UserInputError(f"the box is empty: bbox_max {upper.tolist()} must exceed bbox_min {lower.tolist()} on every axis.")
    if int(resolution) < 2:
        raise UserInputError(f"the resolution must be at least 2 samples per axis, got {resolution}.")
    return lower, (upper - lower) / (int(resolution) - 1)


def _index_to_world(
    index: Int[np.ndarray, "*bs 3"], bbox_min: Float[np.ndarray, "3"], spacing: Float[np.ndarray, "3"]
) -> Float[np.ndarray, "*bs 3"]:
    """`x = bbox_min + k * spacing`; the one formula both paths use, so equal indices give equal points."""
    return bbox_min + index * spacing


def _lattice(axis_x: np.ndarray, axis_y: np.ndarray, axis_z: np.ndarray) -> Int[np.ndarray, "num 3"]:
    """All index triples of the product of three index ranges, x slowest."""
    grid = np.meshgrid(axis_x, axis_y, axis_z, indexing="ij")
    return np.stack([g.reshape(-1) for g in grid], axis=-1)


class _CountingField:
    """Evaluates a level function on float64 numpy points in chunks and counts the queries."""

    def __init__(self, level_fn: LevelFunction, device: Union[str, torch.device], chunk_size: int) -> None:
        self.level_fn = level_fn
        self.device = torch.device(device)
        self.chunk_size = int(chunk_size)
        self.num_queries = 0

    def __call__(self, points_world: Float[np.ndarray, "num 3"]) -> Float[np.ndarray, "num"]:
        values = np.empty(len(points_world), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(points_world), self.chunk_size):
                chunk = points_world[start : start + self.chunk_size].astype(np.float32)
                level = self.level_fn(torch.from_numpy(chunk).to(self.device))
                if level.numel() != len(chunk):
                    raise ValueError(f"the level function returned {tuple(level.shape)} values for {len(chunk)} points; it must return one per point.")
                values[start : start + len(chunk)] = level.reshape(-1).float().cpu().numpy()
        self.num_queries += len(points_world)
        return values


def _check_values(values: np.ndarray, level: float, where: str) -> None:
    """Raise the user-facing error when the sampled field is not finite or never crosses the level."""
    finite = np.isfinite(values)
    if not finite.all():
        raise UserInputError(
            f"the field is NaN or infinite at {int((~finite).sum())} of {values.size} samples of the {where}: "
            "the model has diverged; use an earlier checkpoint or retrain."
        )
    low, high = float(values.min()), float(values.max())
    if not low <= level <= high:
        raise UserInputError(
            f"the field never crosses level {level:g} inside the box (min {low:.3g}, max {high:.3g} over the {where}): "
            "the model has no surface there; train longer or check --bbox."
        )


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


def _progress(enabled: bool) -> Progress:
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
    values = np.empty((resolution,) * 3, dtype=np.float32)
    slab_index = _lattice(np.arange(1), np.arange(resolution), np.arange(resolution))
    slabs_per_chunk = max(1, chunk_size // resolution**2)
    with _progress(progress) as bar:
        task = bar.add_task("dense grid", total=resolution)
        for x_start in range(0, resolution, slabs_per_chunk):
            x_stop = min(x_start + slabs_per_chunk, resolution)
            index = np.concatenate([slab_index + [x, 0, 0] for x in range(x_start, x_stop)])
            values[x_start:x_stop] = field(_index_to_world(index, bbox_min_np, spacing)).reshape(x_stop - x_start, resolution, resolution)
            bar.update(task, completed=x_stop)
    _check_values(values, level, "dense grid")
    vertices_index, faces, _, _ = marching_cubes(values, level=level, allow_degenerate=False)
    stats = ExtractionStats(resolution, 1, 0, field.num_queries, 1, 1, time.perf_counter() - started)
    return _mesh_from_index_vertices(vertices_index.astype(np.float64), faces, bbox_min_np, spacing, stats)


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
    nx, ny, nz = (size - 1 for size in coarse_values.shape)
    corners = [coarse_values[i : i + nx, j : j + ny, k : k + nz] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    corner_min = np.minimum.reduce(corners)
    corner_max = np.maximum.reduce(corners)
    marked = (corner_min <= level) & (corner_max >= level)
    if sdf_lipschitz is not None:
        assert cell_size is not None, "the Lipschitz bound needs the cell size"
        half_diagonal = 0.5 * float(np.linalg.norm(cell_size))
        distance_to_level = np.minimum.reduce([np.abs(corner - level) for corner in corners])
        marked |= distance_to_level <= sdf_lipschitz * half_diagonal
    if dilation > 0 and marked.any():
        marked = ndimage.binary_dilation(marked, structure=np.ones((3, 3, 3), dtype=bool), iterations=dilation)
    return marked


def _interpolation_matrix(num_fine: int, num_coarse: int, factor: int) -> Float[np.ndarray, "num_fine num_coarse"]:
    """Linear interpolation from coarse samples `0..num_coarse-1` to fine samples `j / factor`."""
    position = np.arange(num_fine) / factor
    left = np.minimum(np.floor(position).astype(np.int64), num_coarse - 2)
    weight_right = position - left
    matrix = np.zeros((num_fine, num_coarse))
    matrix[np.arange(num_fine), left] = 1.0 - weight_right
    matrix[np.arange(num_fine), left + 1] = weight_right
    return matrix


def _edge_keys(vertices_local: Float[np.ndarray, "num 3"], offset: np.ndarray, resolution: int) -> Int[np.ndarray, "num"]:
    """Integer id of the grid edge a marching-cubes vertex lies on (or of the sample, if it lies on one).

    A vertex has two integral coordinates and one fractional one, along its edge; blocks that share an edge
    share its block index along that axis, so they compute the fractional coordinate bit for bit alike.
    """
    floor = np.floor(vertices_local)
    fractional = vertices_local != floor
    axis = np.where(fractional.any(axis=1), np.argmax(fractional, axis=1), 3)
    base = floor.astype(np.int64) + offset
    return ((base[:, 0] * resolution + base[:, 1]) * resolution + base[:, 2]) * 4 + axis


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

    def owner(self, index: Int[np.ndarray, "num 3"]) -> Int[np.ndarray, "num"]:
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


def _coarse_values(field: _CountingField, grid: _BlockGrid, bbox_min: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The field at every `coarse_factor`-th fine sample; the last coarse sample may lie past the box."""
    coarse_index = np.arange(grid.num_coarse_cells + 1) * grid.coarse_factor
    size = len(coarse_index)
    values = np.empty((size,) * 3, dtype=np.float32)
    slab_index = _lattice(np.zeros(1, dtype=np.int64), coarse_index, coarse_index)
    slabs_per_chunk = max(1, field.chunk_size // size**2)
    for start in range(0, size, slabs_per_chunk):
        stop = min(start + slabs_per_chunk, size)
        index = np.concatenate([slab_index + [coarse_index[i], 0, 0] for i in range(start, stop)])
        values[start:stop] = field(_index_to_world(index, bbox_min, spacing)).reshape(stop - start, size, size)
    return values


def _needed_samples(
    marked_padded: np.ndarray, grid: _BlockGrid, start: np.ndarray, stop: np.ndarray
) -> Bool[np.ndarray, "bx by bz"]:
    """Fine samples of the block `[start, stop]` that are a corner of some marked coarse cell.

    Sample `k` belongs to the coarse cells `(k - 1) // c` and `k // c` along each axis (the same cell unless `k`
    is a multiple of `c`); `marked_padded` has one unmarked cell on every side so both always exist.
    """
    cells = []
    for axis in range(3):
        k = np.arange(start[axis], stop[axis] + 1)
        cells.append(((k - 1) // grid.coarse_factor + 1, k // grid.coarse_factor + 1))
    (lo_x, hi_x), (lo_y, hi_y), (lo_z, hi_z) = cells
    window = marked_padded[lo_x[0] : hi_x[-1] + 1, lo_y[0] : hi_y[-1] + 1, lo_z[0] : hi_z[-1] + 1]
    lo_x, hi_x, lo_y, hi_y, lo_z, hi_z = lo_x - lo_x[0], hi_x - lo_x[0], lo_y - lo_y[0], hi_y - lo_y[0], lo_z - lo_z[0], hi_z - lo_z[0]
    needed = window[lo_x] | window[hi_x]
    needed = needed[:, lo_y] | needed[:, hi_y]
    return needed[:, :, lo_z] | needed[:, :, hi_z]


def _fill_from_coarse(coarse_values: np.ndarray, grid: _BlockGrid, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of the coarse grid at the fine samples of a block."""
    c = grid.coarse_factor
    first = start // c
    last = -(-stop // c)
    window = coarse_values[first[0] : last[0] + 1, first[1] : last[1] + 1, first[2] : last[2] + 1].astype(np.float64)
    for axis in range(3):
        matrix = _interpolation_matrix(int(stop[axis] - start[axis]) + 1, window.shape[axis], c)
        window = np.moveaxis(np.tensordot(matrix, window, axes=([1], [axis])), 0, axis)
    return window.astype(np.float32)


class _BoundaryCache:
    """Values of block-boundary samples, kept by the block that owns them until that block has been passed.

    A sample shared by several blocks lies on the low faces of its owner, so the blocks that use it are the
    owner and blocks before it in the walk: the first of them evaluates it, the others read it here.
    """

    def __init__(self) -> None:
        self.entries: Dict[int, List[Tuple[np.ndarray, np.ndarray]]] = {}

    def lookup(self, owners: Sequence[int], keys: Int[np.ndarray, "num"]) -> Tuple[np.ndarray, np.ndarray]:
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

    def store(self, owners: Int[np.ndarray, "num"], keys: Int[np.ndarray, "num"], values: np.ndarray) -> None:
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
    coarse_factor: int = 4,
    dilation: int = 1,
    sdf_lipschitz: Optional[float] = None,
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
        coarse_factor: fine cells per coarse cell side.
        dilation: coarse cells added around the cells that straddle the level.
        sdf_lipschitz: the field's Lipschitz constant if it is an SDF (1 for an exact SDF); marks cells that a
            crossing could reach, making the search exhaustive. Leave None for occupancy logits.
        device: where the query points are sent.
        chunk_size: points per call of `level_fn`.
        progress: show a progress bar on stderr.

    Returns:
        The mesh in the box's coordinates, faces oriented outwards (towards increasing values), with an
        `ExtractionStats` in `mesh.metadata[STATS_KEY]`.

    Raises:
        UserInputError: the field does not cross the level on the coarse grid, or is not finite there.
    """
    started = time.perf_counter()
    bbox_min_np, spacing = _box(bbox_min, bbox_max, resolution)
    if coarse_factor < 1 or block_resolution < coarse_factor or block_resolution % coarse_factor:
        raise UserInputError(f"block_resolution ({block_resolution}) must be a positive multiple of coarse_factor ({coarse_factor}).")
    grid = _BlockGrid(int(resolution), int(block_resolution), int(coarse_factor))
    field = _CountingField(level_fn, device, chunk_size)

    with _progress(progress) as bar:
        coarse_task = bar.add_task("coarse grid", total=1)
        coarse_values = _coarse_values(field, grid, bbox_min_np, spacing)
        bar.update(coarse_task, completed=1)
        num_coarse_queries = field.num_queries
        _check_values(coarse_values, level, "coarse grid")
        marked = mark_cells(coarse_values, level, dilation, sdf_lipschitz, spacing * grid.coarse_factor)
        marked_padded = np.pad(marked, 1)

        cells_per_block = grid.block_resolution // grid.coarse_factor
        padded_cells = grid.num_blocks * cells_per_block
        marked_blocks = np.pad(marked, [(0, padded_cells - grid.num_coarse_cells)] * 3)
        marked_blocks = marked_blocks.reshape([grid.num_blocks, cells_per_block] * 3).any(axis=(1, 3, 5))

        cache = _BoundaryCache()
        keys_per_block: List[np.ndarray] = []
        vertices_per_block: List[np.ndarray] = []
        faces_per_block: List[np.ndarray] = []
        num_vertices = 0
        fine_task = bar.add_task("fine blocks", total=int(marked_blocks.sum()))
        for block in grid.blocks():
            block_id = grid.flat_id(block)
            if marked_blocks[block]:
                volume = _evaluate_block(field, grid, block, coarse_values, marked_padded, cache, bbox_min_np, spacing)
                if volume.min() <= level <= volume.max():
                    try:
                        vertices_local, faces, _, _ = marching_cubes(volume, level=level, allow_degenerate=False)
                    except RuntimeError:  # touches the level without crossing it
                        vertices_local = np.zeros((0, 3))
                    if len(vertices_local):
                        start, _ = grid.block_range(block)
                        keys_per_block.append(_edge_keys(vertices_local, start, grid.resolution))
                        vertices_per_block.append(vertices_local.astype(np.float64) + start)
                        faces_per_block.append(faces + num_vertices)
                        num_vertices += len(vertices_local)
                bar.advance(fine_task)
            cache.release(block_id)

    if not faces_per_block:
        low, high = float(coarse_values.min()), float(coarse_values.max())
        raise UserInputError(
            f"the field never crosses level {level:g} on the fine grid (coarse min {low:.3g}, max {high:.3g}): "
            "the model has no surface there; train longer or check --bbox."
        )
    keys = np.concatenate(keys_per_block)
    unique_keys, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    vertices_index = np.concatenate(vertices_per_block)[first]
    faces = inverse.reshape(-1)[np.concatenate(faces_per_block)]
    # vertices that sit exactly on a sample collapse into one, which can leave a degenerate face
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    stats = ExtractionStats(
        resolution=grid.resolution,
        coarse_factor=grid.coarse_factor,
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
    """The block's volume for marching cubes: field values where needed, coarse interpolation elsewhere."""
    start, stop = grid.block_range(block)
    volume = _fill_from_coarse(coarse_values, grid, start, stop)
    needed = _needed_samples(marked_padded, grid, start, stop)
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


# ---------------------------------------------------------------------------------------------------------------------
# post-processing


def keep_largest_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The connected component (faces joined through shared vertices) with the most faces."""
    if len(mesh.faces) == 0:
        return mesh.copy()
    edges = np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]]])
    ones = np.ones(len(edges), dtype=np.int8)
    adjacency = coo_matrix((ones, (edges[:, 0], edges[:, 1])), shape=(len(mesh.vertices),) * 2)
    _, vertex_component = connected_components(adjacency, directed=False)
    face_component = vertex_component[mesh.faces[:, 0]]
    largest = np.argmax(np.bincount(face_component))
    return _submesh(mesh, face_component == largest)


def _submesh(mesh: trimesh.Trimesh, face_mask: Bool[np.ndarray, "num_faces"]) -> trimesh.Trimesh:
    """The faces in `face_mask` with the vertices they use (colours and metadata carried along)."""
    faces = mesh.faces[face_mask]
    used = np.unique(faces)
    remap = np.full(len(mesh.vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    vertex_colors = None
    if mesh.visual.kind == "vertex":
        vertex_colors = np.asarray(mesh.visual.vertex_colors)[used]
    result = trimesh.Trimesh(mesh.vertices[used], remap[faces], vertex_colors=vertex_colors, process=False)
    result.metadata.update(mesh.metadata)
    return result


def transform_mesh(mesh: trimesh.Trimesh, matrix: Float[np.ndarray, "4 4"]) -> trimesh.Trimesh:
    """A copy with vertices mapped by the homogeneous `matrix` (faces flipped if it mirrors, keeping normals outward)."""
    result = mesh.copy()
    result.apply_transform(np.asarray(matrix, dtype=np.float64))
    return result


def dilate_mask(mask: Bool[np.ndarray, "H W"], radius_px: float) -> Bool[np.ndarray, "H W"]:
    """Pixels within `radius_px` (Euclidean) of the mask: dilation by a disk."""
    mask = np.asarray(mask, dtype=bool)
    if radius_px <= 0 or not mask.any():
        return mask
    return ndimage.distance_transform_edt(~mask) <= radius_px


def project_points(
    points_world: Float[np.ndarray, "num 3"], intrinsics: Float[np.ndarray, "3 3"], c2w_opencv: Float[np.ndarray, "3or4 4"]
) -> Tuple[Float[np.ndarray, "num 2"], Float[np.ndarray, "num"]]:
    """Pixel coordinates `(u, v)` (pixel centres at integers) and depth `z` of points in an OpenCV camera.

    With `c2w = [R | t]`: `x_cam = R^T (x_world - t)`, `(u, v) = (K x_cam)_{xy} / z`.
    """
    rotation, center = c2w_opencv[:3, :3], c2w_opencv[:3, 3]
    points_camera = (points_world - center) @ rotation
    depth = points_camera[:, 2]
    projected = points_camera @ np.asarray(intrinsics).T
    with np.errstate(divide="ignore", invalid="ignore"):
        pixels = projected[:, :2] / depth[:, None]
    return pixels, depth


def cull_by_cameras(
    mesh: trimesh.Trimesh,
    intrinsics: Float[np.ndarray, "num_views 3 3"],
    c2w_opencv: Float[np.ndarray, "num_views 4 4"],
    image_sizes: Union[Tuple[int, int], Int[np.ndarray, "num_views 2"]],
    masks: Optional[Sequence[Bool[np.ndarray, "H W"]]] = None,
    dilation_px: float = 0.0,
    min_views: int = 1,
) -> trimesh.Trimesh:
    """Remove what the cameras cannot vouch for.

    A vertex is seen by a view when it lies in front of the camera and projects inside the image. It is kept
    when at least `min_views` views see it and, if masks are given, it falls inside the mask (dilated by
    `dilation_px` pixels) of every view that sees it: the visual hull rule of the usual DTU evaluation.
    A face is kept when its three vertices are.

    Cameras are OpenCV (x right, y down, z forward) camera-to-world matrices in the mesh's coordinates; from
    nerfstudio's OpenGL `camera_to_worlds` use `c2w @ diag(1, -1, -1, 1)`. `image_sizes` are `(width, height)`,
    one per view or one for all; masks are `(height, width)` arrays, nonzero inside.
    """
    intrinsics = np.asarray(intrinsics, dtype=np.float64).reshape(-1, 3, 3)
    c2w_opencv = np.asarray(c2w_opencv, dtype=np.float64)
    sizes = np.broadcast_to(np.asarray(image_sizes, dtype=np.int64).reshape(-1, 2), (len(intrinsics), 2))
    if masks is not None and len(masks) != len(intrinsics):
        raise UserInputError(f"{len(masks)} masks were given for {len(intrinsics)} cameras; give one mask per camera.")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    views_seeing = np.zeros(len(vertices), dtype=np.int64)
    outside_a_mask = np.zeros(len(vertices), dtype=bool)
    for view in range(len(intrinsics)):
        width, height = (int(s) for s in sizes[view])
        pixels, depth = project_points(vertices, intrinsics[view], c2w_opencv[view])
        in_front = depth > 1e-8
        column = np.floor(np.where(in_front, pixels[:, 0], -1.0) + 0.5)
        row = np.floor(np.where(in_front, pixels[:, 1], -1.0) + 0.5)
        seen = in_front & (column >= 0) & (column < width) & (row >= 0) & (row < height)
        views_seeing += seen
        if masks is not None:
            mask = dilate_mask(np.asarray(masks[view]) > 0, dilation_px)
            if mask.shape != (height, width):
                raise UserInputError(f"mask {view} is {mask.shape[1]}x{mask.shape[0]} but its image is {width}x{height}; masks must match the images.")
            seen_index = np.flatnonzero(seen)
            inside = mask[row[seen_index].astype(np.int64), column[seen_index].astype(np.int64)]
            outside_a_mask[seen_index[~inside]] = True
    keep_vertex = (views_seeing >= min_views) & ~outside_a_mask
    return _submesh(mesh, keep_vertex[mesh.faces].all(axis=1))


MESH_SUFFIXES = (".ply", ".obj", ".glb")


def export_mesh(mesh: trimesh.Trimesh, path: Union[str, Path]) -> Path:
    """Write `.ply`, `.obj` or `.glb` (chosen by the suffix), creating the folder."""
    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise UserInputError(f"{path}: unknown mesh format '{path.suffix}'; use one of {', '.join(MESH_SUFFIXES)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path)
    return path
