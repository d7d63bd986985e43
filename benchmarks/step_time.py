"""Wall-clock seconds of a CPU-size training step on a capture, for variants of the model settings, in turn.

Each variant is a set of `--set`-style settings (`real_scan.py`'s) on top of the method's CPU size
(`training.small_cpu_config`, schedules over `--steps`). Its trainer is moved to `--at-step` (the grid levels
active as at that step of such a run), takes `--warmup` steps, then `--measure` steps timed one by one. The variants
take turns, `--rounds` times over, so that a machine that speeds up or slows down does so for all of them. Per
variant and round it prints the median wall-clock seconds of a step (with the threads torch has: set
OMP_NUM_THREADS) and the CPU seconds of the process per step. `--load-dir` starts every trainer from a kept
run's checkpoint (its `nerfstudio_models` folder) instead of the initial fields: a trained surface is what a run
spends most of its steps on. `--python-profile N` prints, per variant and round, the N Python functions with the
most cumulative time over the timed steps (cProfile, whose own cost the step times then include): which part of
the step (sampler, field passes, backward, optimiser) the time goes to. `docs/benchmarks.md` keeps results.

    python benchmarks/step_time.py --variant "" --variant sampler.num_uniform=16
    python benchmarks/step_time.py --rounds 1 --python-profile 40 --load-dir runs/real_scan_x/neus-fast/<timestamp>/nerfstudio_models
    OMP_NUM_THREADS=1 python benchmarks/step_time.py --data synthetic/dtu_like --variant "" --variant sampler.num_uniform=16
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path

from precision import machine_line  # this folder is on sys.path when a script here runs

from neurecon_ns.training import apply_model_settings, method_config, run_iteration, setup_trainer, small_cpu_config

DEFAULT_DATA = Path("../shared/data/dtu_scan65_400x300")


def time_variant(args: argparse.Namespace, settings: list) -> tuple:
    """(median wall seconds, mean CPU seconds) per step of one variant's own trainer."""
    with tempfile.TemporaryDirectory() as output_dir:
        config = small_cpu_config(method_config(args.method), args.data, Path(output_dir), args.steps, seed=args.seed)
        apply_model_settings(config, settings)
        if args.load_dir is not None:
            config.load_dir = args.load_dir
        trainer = setup_trainer(config)
        for step in range(args.at_step, args.at_step + args.warmup):
            run_iteration(trainer, step)
        wall = []
        profile = cProfile.Profile() if args.python_profile > 0 else None
        cpu_started = time.process_time()
        for step in range(args.at_step + args.warmup, args.at_step + args.warmup + args.measure):
            started = time.perf_counter()
            if profile is None:
                run_iteration(trainer, step)
            else:
                profile.runcall(run_iteration, trainer, step)
            wall.append(time.perf_counter() - started)
        cpu = (time.process_time() - cpu_started) / args.measure
        if profile is not None:
            print(f"cumulative seconds over the {args.measure} timed steps:")
            pstats.Stats(profile).sort_stats("cumulative").print_stats(args.python_profile)
        return statistics.median(wall), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="capture in the NeuS layout")
    parser.add_argument("--method", default="neus-fast")
    parser.add_argument("--variant", action="append", default=None, metavar="'NAME=VALUE ...'",
                        help="settings of one variant, space-separated ('' for the CPU size itself); repeat per variant")
    parser.add_argument("--steps", type=int, default=3600, help="schedule length the trainers are fitted to")
    parser.add_argument("--at-step", type=int, default=2000, help="training step the timed steps start at")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--measure", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--load-dir", type=Path, default=None, help="a kept run's nerfstudio_models folder to start from")
    parser.add_argument("--python-profile", type=int, default=0, metavar="N",
                        help="print the N Python functions with the most cumulative time over the timed steps")
    args = parser.parse_args()
    if args.load_dir is not None and not any(args.load_dir.glob("step-*.ckpt")):
        parser.error(f"{args.load_dir} holds no step-*.ckpt: give a kept run's nerfstudio_models folder")
    variants = args.variant or [""]
    print("machine:", machine_line("cpu"), flush=True)
    print(f"data: {args.data}, {args.method} CPU size over {args.steps} steps, steps {args.at_step}+{args.warmup} on, "
          f"median of {args.measure}", flush=True)
    rows = []
    for round_index in range(args.rounds):
        for variant in variants:
            wall, cpu = time_variant(args, variant.split())
            rows.append((variant or "(the CPU size)", round_index, wall, cpu))
            print(f"round {round_index}: {variant or '(the CPU size)'}: {wall:.4f} s per step, {cpu:.4f} CPU s", flush=True)
    print("\n| variant | round | s per step (median) | CPU s per step |\n| --- | ---: | ---: | ---: |")
    for variant, round_index, wall, cpu in rows:
        print(f"| {variant} | {round_index} | {wall:.4f} | {cpu:.4f} |")
    print("end:", machine_line("cpu"))


if __name__ == "__main__":
    main()
