"""CPU time of a training step of `neus-fast` at its CPU size with each way of getting the SDF's derivatives.

Variants (each a set of `--set`-style model settings on top of `training.small_cpu_config`; the first five without
the CPU size's grid smoothness term):

- closed-form gradient, no curvature loss;
- closed-form gradient, curvature loss on the samples of 64 or 128 of the 512 rays (seven level queries each);
- closed-form gradient, curvature loss at the surface: the two samples of highest weight on each of the 512 rays;
- central differences (numerical gradient) for every sample, whose seven values also give every Laplacian;
- the CPU size itself: the curvature loss at the surface and the grid smoothness term on the coarse levels' vertices.

Every variant reads the grid's coarsest level through quadratic B-splines, as the CPU size does.

One trainer per variant on the 96x96 composite object, all set to the same mid-run step (6 of 8 levels active at
step 400 of a 2400-step schedule); their steps are taken in turn, round after round, and each step's CPU time
(`time.process_time`, one torch thread) is kept, so that other jobs on a shared machine change the wall clock but
hardly the numbers. The first two rounds are left out (allocation, first occupancy-grid refresh).

    python benchmarks/curvature_cost.py --rounds 6
    python benchmarks/curvature_cost.py --compare grid --at-step 2000   # every level active

`--compare grid` times the CPU size against other finest levels and table sizes of the grid, and against none
or two of its coarsest levels read through quadratic B-splines (the CPU size reads one), instead.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from neurecon_ns.data.synthetic import write_scene
from neurecon_ns.training import apply_model_settings, method_config, run_iteration, setup_trainer, small_cpu_config

GRID = "networks.geometry.hash_grid"
GRID_VARIANTS = {
    f"grid up to {cells} cells, tables of 2^{log2_size}" + (" (CPU size)" if (cells, log2_size) == (512, 19) else ""): [
        f"{GRID}.max_resolution={cells}",
        f"{GRID}.log2_hashmap_size={log2_size}",
    ]
    for cells, log2_size in ((256, 18), (512, 19), (512, 20), (512, 21))
}
GRID_VARIANTS.update({
    f"CPU size, {label}": [f"{GRID}.quadratic_levels={count}"]
    for count, label in ((0, "every level trilinear"), (2, "2 coarsest levels quadratic"))
})
"""`--compare grid`: the CPU size's curvature loss and gradient, with the grid's finest level and table size varied
(the coarsest level quadratic, as the CPU size has it), and with none or two of its levels read through quadratic
B-splines (27 vertices per point and level in place of 8)."""

NO_SMOOTHNESS = "grid_smoothness_loss_weight=0.0"
VARIANTS = {
    "closed form": ["curvature_loss_weight=0.0", NO_SMOOTHNESS],
    "closed form + curvature, 64 rays": ["curvature_loss_weight=5e-3", "curvature_num_rays=64", NO_SMOOTHNESS],
    "closed form + curvature, 128 rays": ["curvature_loss_weight=5e-3", "curvature_num_rays=128", NO_SMOOTHNESS],
    "closed form + curvature at the surface, 2 per ray": ["curvature_loss_weight=5e-3", "curvature_points=surface", NO_SMOOTHNESS],
    "numerical + curvature, all rays": ["curvature_loss_weight=5e-3", "networks.gradient=numerical", NO_SMOOTHNESS],
    "closed form + curvature at the surface + grid smoothness (CPU size)": [],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", choices=("derivatives", "grid"), default="derivatives",
                        help="the ways of getting the SDF's derivatives, or the grid's finest level and table size")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds (two more are taken first)")
    parser.add_argument("--steps", type=int, default=2400, help="schedule length the runs are fitted to")
    parser.add_argument("--at-step", type=int, default=400, help="training step the rounds start at")
    args = parser.parse_args()
    torch.set_num_threads(1)

    work = Path(tempfile.mkdtemp(prefix="curvature_cost_"))
    scene = write_scene(work / "scene", shape="composite", num_views=40, width=96, height=96, mesh_resolution=128)
    variants = GRID_VARIANTS if args.compare == "grid" else VARIANTS
    trainers = {}
    for name, settings in variants.items():
        config = small_cpu_config(method_config("neus-fast"), scene.output_dir, work / str(len(trainers)), args.steps)
        apply_model_settings(config, settings)
        torch.manual_seed(0)
        trainers[name] = setup_trainer(config)
    seconds = {name: [] for name in variants}
    for round_index in range(args.rounds + 2):
        for name, trainer in trainers.items():
            started = time.process_time()
            run_iteration(trainer, args.at_step + round_index)
            if round_index >= 2:
                seconds[name].append(time.process_time() - started)
    baseline = statistics.median(next(iter(seconds.values())))
    print(f"{'variant':<52}{'CPU s/step':>11}{'ratio':>7}{'min':>7}{'max':>7}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:<52}{median:>11.3f}{median / baseline:>7.2f}{min(values):>7.3f}{max(values):>7.3f}")


if __name__ == "__main__":
    main()
