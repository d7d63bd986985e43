"""Where a ray first enters the surface: dense search with secant refinement, and sphere tracing.

Both take a level function `f(points) -> values`, positive outside, negative inside and zero on
the surface (`SurfaceModel.level_set`: the SDF of NeuS and VolSDF, the negated occupancy logit of
UNISURF), evaluate it without its gradient, and work on rays `o + t d` with per-ray bounds
`[t_near, t_far]` of shape `[num_rays, 1]`.

- `find_first_root`: UNISURF sec. 3.3. `f` is evaluated at evenly spaced steps, the first step
  pair that goes from outside to inside brackets the surface, and secant steps refine it.
  It needs no distance property, so it serves occupancy fields (and SDFs).
- `sphere_trace`: `t <- t + f(o + t d)` (Hart 1996), which cannot step through the surface while
  `f` underestimates the distance to it; fast for SDFs, meaningless for an occupancy logit.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from neurecon_ns.utils.accelerator import reads_on_host_are_free

LevelFunction = Callable[[Float[Tensor, "*bs 3"]], Float[Tensor, "*bs"]]


def first_entry(
    values: Float[Tensor, "num_rays num_steps"],
) -> Tuple[Int[Tensor, " num_rays"], Bool[Tensor, " num_rays"]]:
    """Index `i` of the first step pair with `f_i > 0 >= f_{i+1}` (outside, then inside) per ray.

    Rays with no such pair are flagged `False` in the second tensor (their index is 0).
    """
    entering = (values[:, :-1] > 0) & (values[:, 1:] <= 0)
    # argmax returns the first of equal maxima
    return torch.argmax(entering.to(torch.uint8), dim=-1), entering.any(dim=-1)


def secant_step(t_outside: Tensor, t_inside: Tensor, value_outside: Tensor, value_inside: Tensor) -> Tensor:
    """Zero of the line through `(t_out, f_out)` and `(t_in, f_in)`: `t_out - f_out (t_in - t_out) / (f_in - f_out)`."""
    slope_denominator = value_inside - value_outside
    slope_denominator = torch.where(
        slope_denominator.abs() < 1e-12, torch.full_like(slope_denominator, -1e-12), slope_denominator
    )
    return t_outside - value_outside * (t_inside - t_outside) / slope_denominator


def secant_refine(
    level_fn: LevelFunction,
    origins: Float[Tensor, "num_rays 3"],
    directions: Float[Tensor, "num_rays 3"],
    t_outside: Float[Tensor, "num_rays 1"],
    t_inside: Float[Tensor, "num_rays 1"],
    value_outside: Float[Tensor, "num_rays 1"],
    value_inside: Float[Tensor, "num_rays 1"],
    num_steps: int,
) -> Float[Tensor, "num_rays 1"]:
    """Secant steps on a bracket `f(t_out) > 0 >= f(t_in)` that keep the bracket (regula falsi, Illinois variant).

    Each step evaluates `f` at the secant estimate and replaces the end of the same sign, so the
    estimate never leaves `[t_out, t_in]`. Where the same end is replaced twice in a row, the value
    kept at the other end is halved (the Illinois rule): plain regula falsi then keeps one end fixed
    and converges slowly on a curved `f`. The returned `t` is the last estimate.
    """
    t_root = secant_step(t_outside, t_inside, value_outside, value_inside)
    replaced_outside_before = torch.zeros_like(t_root, dtype=torch.bool)
    replaced_inside_before = torch.zeros_like(t_root, dtype=torch.bool)
    for _ in range(num_steps):
        value_root = level_fn(origins + t_root * directions)[..., None].to(t_root.dtype)
        outside = value_root > 0
        value_inside = torch.where(outside & replaced_outside_before, value_inside / 2, value_inside)
        value_outside = torch.where(~outside & replaced_inside_before, value_outside / 2, value_outside)
        t_outside = torch.where(outside, t_root, t_outside)
        value_outside = torch.where(outside, value_root, value_outside)
        t_inside = torch.where(outside, t_inside, t_root)
        value_inside = torch.where(outside, value_inside, value_root)
        replaced_outside_before, replaced_inside_before = outside, ~outside
        t_root = secant_step(t_outside, t_inside, value_outside, value_inside)
    return t_root


@torch.no_grad()
def find_first_root(
    level_fn: LevelFunction,
    origins: Float[Tensor, "num_rays 3"],
    directions: Float[Tensor, "num_rays 3"],
    t_near: Float[Tensor, "num_rays 1"],
    t_far: Float[Tensor, "num_rays 1"],
    num_steps: int,
    num_secant_steps: int,
    block_size: int = 32,
    compact: Optional[bool] = None,
) -> Tuple[Float[Tensor, "num_rays 1"], Bool[Tensor, "num_rays 1"]]:
    """UNISURF's surface search: the first `t` in `[t_near, t_far]` where `f` goes from positive to non-positive.

    `f` is evaluated at `num_steps` evenly spaced `t_j = t_near + j (t_far - t_near) / (num_steps - 1)`;
    the first pair `f(t_j) > 0 >= f(t_{j+1})` is refined by `num_secant_steps` secant steps. A
    surface thinner than a step along the ray can be missed. Returns `t_root` (`t_far` where
    nothing was found) and `hit`.

    On a CPU (`reads_on_host_are_free`) the steps are evaluated `block_size` at a time from the near end, and
    a ray whose crossing has been found is not evaluated further, nor is a ray without one refined. On a GPU
    every ray is evaluated at every step, in one pass, and refined, and the rays without a crossing are
    masked: no host read stalls the device. The result is the same (`compact` chooses; tests compare them).
    """
    if compact is None:
        compact = reads_on_host_are_free(origins.device)
    fractions = torch.linspace(0.0, 1.0, num_steps, device=origins.device, dtype=origins.dtype)
    t_steps = t_near + (t_far - t_near) * fractions  # [num_rays, num_steps]
    if compact:
        index, hit, values = _first_entry_by_blocks(level_fn, origins, directions, t_steps, block_size)
        rays = hit.nonzero()[:, 0]
    else:
        points = origins[:, None, :] + t_steps[..., None] * directions[:, None, :]
        values = level_fn(points).to(t_steps.dtype)
        index, hit = first_entry(values)
        rays = torch.arange(origins.shape[0], device=origins.device)
    t_root = t_far.clone()
    if rays.numel() > 0:
        below, above = index[rays, None], index[rays, None] + 1
        refined = secant_refine(
            level_fn,
            origins[rays],
            directions[rays],
            t_steps[rays].gather(-1, below),
            t_steps[rays].gather(-1, above),
            values[rays].gather(-1, below),
            values[rays].gather(-1, above),
            num_secant_steps,
        )
        t_root[rays] = refined if compact else torch.where(hit[:, None], refined, t_far)
    return t_root, hit[:, None]


def _first_entry_by_blocks(
    level_fn: LevelFunction,
    origins: Float[Tensor, "num_rays 3"],
    directions: Float[Tensor, "num_rays 3"],
    t_steps: Float[Tensor, "num_rays num_steps"],
    block_size: int,
) -> Tuple[Int[Tensor, " num_rays"], Bool[Tensor, " num_rays"], Float[Tensor, "num_rays num_steps"]]:
    """`first_entry` of the level values at `t_steps`, evaluated `block_size` steps at a time from the near end
    on the rays still without a crossing (values of steps never evaluated stay 0)."""
    num_rays, num_steps = t_steps.shape
    values = torch.zeros_like(t_steps)
    index = torch.zeros(num_rays, dtype=torch.long, device=origins.device)
    hit = torch.zeros(num_rays, dtype=torch.bool, device=origins.device)
    searching = torch.arange(num_rays, device=origins.device)
    start = 0
    while start < num_steps and searching.numel() > 0:
        stop = min(start + block_size, num_steps)
        t_block = t_steps[searching, start:stop]
        points = origins[searching, None, :] + t_block[..., None] * directions[searching, None, :]
        values[searching, start:stop] = level_fn(points).to(values.dtype)
        # a crossing may straddle two blocks: look at the pairs from the last step of the previous one
        first = max(start - 1, 0)
        if stop - first >= 2:
            block_index, found = first_entry(values[searching, first:stop])
            index[searching[found]] = block_index[found] + first
            hit[searching[found]] = True
            searching = searching[~found]
        start = stop
    return index, hit, values


@torch.no_grad()
def sphere_trace(
    level_fn: LevelFunction,
    origins: Float[Tensor, "num_rays 3"],
    directions: Float[Tensor, "num_rays 3"],
    t_near: Float[Tensor, "num_rays 1"],
    t_far: Float[Tensor, "num_rays 1"],
    num_steps: int,
    tolerance: float,
    compact: Optional[bool] = None,
) -> Tuple[Float[Tensor, "num_rays 1"], Bool[Tensor, "num_rays 1"]]:
    """Sphere tracing from `t_near`: `t_{k+1} = t_k + f(o + t_k d)` until `|f| < tolerance`.

    For unit `d` and an `f` that is at most the distance to the surface, no step crosses it. A
    slight overshoot of a learned SDF gives `f < 0` and the signed step walks back. Only rays still
    inside `[t_near, t_far]` are evaluated. Returns `t` and `converged`; a ray that is neither
    converged nor past `t_far` after `num_steps` (grazing rays, rays starting inside, a field that is
    not a distance) is left for the caller to resolve, e.g. with `find_first_root`.

    On a CPU (`compact`) each step evaluates only the active rays and the loop stops when none is left; on a
    GPU every ray is evaluated at every step and the finished ones are held in place, with no host read.
    """
    if compact is None:
        compact = reads_on_host_are_free(origins.device)
    t = t_near.clone()
    converged = torch.zeros_like(t, dtype=torch.bool)
    active = torch.ones(t.shape[0], dtype=torch.bool, device=t.device)
    for _ in range(num_steps):
        rays = active.nonzero()[:, 0] if compact else slice(None)
        if compact and rays.numel() == 0:
            break
        value = level_fn(origins[rays] + t[rays] * directions[rays])[..., None].to(t.dtype)
        done = value.abs() < tolerance
        still_active = active[rays, None]
        converged[rays] = torch.where(still_active, done, converged[rays])
        t[rays] = torch.where(done | ~still_active, t[rays], t[rays] + value)
        left_bounds = (t[rays] > t_far[rays]) | (t[rays] < t_near[rays])
        active[rays] = still_active[:, 0] & ~(done | left_bounds)[:, 0]
    return t, converged
