"""Surface quality without masks, with and without the NeRF++ background, on a scene whose environment
only a background can explain.

The scene (`write_scene(..., background="environment")`) shows the object in front of direction-only
radiance (light from infinitely far). Masks are written but ignored: `neus-data` with `masks off`.
Each method is trained with its own settings shrunk for the CPU (`training.small_cpu_config`, the
background network at 4 x 64), once with `background_model nerfpp` and once with the constant black
background, and the extracted surface is compared with the exact one (unit-sphere units). Prints a
table; `docs/own_capture.md` keeps results.

    python benchmarks/nerfpp_background.py                          # neus-nerfpp, 1500 steps
    python benchmarks/nerfpp_background.py --methods neus-nerfpp volsdf-nerfpp --steps 3000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from neurecon_ns.data.neus_dataparser import NeusDataParserConfig
from neurecon_ns.data.synthetic import write_scene
from neurecon_ns.training import train_short

SMALL_BACKGROUND = {
    "background_network.hidden_dim": 64,
    "background_network.num_layers": 4,
    "background_network.skip_layers": (2,),
    "background_network.num_frequencies": 6,
}


def background_overrides(method: str, background: str) -> dict:
    if background == "nerfpp":
        return dict(SMALL_BACKGROUND)
    overrides = {"background_model": "none"}
    if method.startswith("volsdf"):
        overrides["scene_sphere_background"] = False
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["neus-nerfpp"])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--backgrounds", nargs="+", default=["nerfpp", "none"], choices=["nerfpp", "none"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nerfpp_background_"))
    scene = workdir / "scene"
    if not (scene / "scene.json").is_file():
        write_scene(scene, num_views=32, width=64, height=64, background="environment", mesh_resolution=192)
    rows = []
    for method in args.methods:
        for background in args.backgrounds:
            run = train_short(
                method,
                scene,
                workdir / "runs" / background,
                args.steps,
                seed=args.seed,
                overrides=background_overrides(method, background),
                dataparser=NeusDataParserConfig(data=scene, masks="off"),
            )
            report = run.report
            rows.append((method, background, report.accuracy, report.completeness, report.chamfer, run.train_seconds))
            print(f"{method:14s} background={background:7s} accuracy={report.accuracy:.4f} "
                  f"completeness={report.completeness:.4f} chamfer={report.chamfer:.4f} ({run.train_seconds:.0f} s)", flush=True)
    print()
    print(f"{'method':14s} {'background':10s} {'accuracy':>9s} {'complete':>9s} {'Chamfer':>9s} {'train s':>8s}")
    for method, background, accuracy, completeness, chamfer, seconds in rows:
        print(f"{method:14s} {background:10s} {accuracy:9.4f} {completeness:9.4f} {chamfer:9.4f} {seconds:8.0f}")


if __name__ == "__main__":
    main()
