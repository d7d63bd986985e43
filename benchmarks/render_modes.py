"""Seconds to render one image in volume mode and in surface mode, for each method, from the same run.

For every method: a short CPU run on a synthetic scene (`neurecon_ns.training.train_short`), or an existing run
given with `--load-config`; then the same camera is rendered through nerfstudio's
`model.get_outputs_for_camera` with `render_mode` "volume" and "surface" (best of `--repeats`). Prints, per
method, both times, their ratio, the rays the surface search hit, and the PSNR of each image against the
ground truth of that view. `docs/rendering.md` keeps results.

    python benchmarks/render_modes.py                                   # the three methods, short runs
    python benchmarks/render_modes.py --load-config outputs/.../config.yml --downscale 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

DEFAULT_METHODS = ("neus-dtu", "volsdf-dtu", "unisurf-dtu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_render(model, camera, mode: str, repeats: int) -> Tuple[float, Dict[str, torch.Tensor]]:
    """Best wall-clock seconds over `repeats` renders of `camera` in `mode`, and the last outputs."""
    model.eval()
    model.render_mode = mode
    best = float("inf")
    outputs: Dict[str, torch.Tensor] = {}
    for _ in range(repeats):
        sync(model.device)
        started = time.perf_counter()
        outputs = model.get_outputs_for_camera(camera)
        sync(model.device)
        best = min(best, time.perf_counter() - started)
    model.render_mode = model.config.render_mode
    return best, outputs


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    return float(-10.0 * torch.log10(((image.clamp(0, 1) - reference) ** 2).mean()))


def measure(pipeline, label: str, repeats: int, downscale: int) -> List[str]:
    model = pipeline.model
    dataset = pipeline.datamanager.train_dataset
    camera = dataset.cameras[0:1].to(model.device)
    reference = dataset.get_image_float32(0)[..., :3]
    if downscale > 1:
        camera.rescale_output_resolution(1.0 / downscale)
        reference = torch.nn.functional.interpolate(
            reference.permute(2, 0, 1)[None], size=(int(camera.height), int(camera.width)), mode="area"
        )[0].permute(1, 2, 0)
    reference = reference.to(model.device)
    volume_seconds, volume = time_render(model, camera, "volume", repeats)
    surface_seconds, surface = time_render(model, camera, "surface", repeats)
    hit_fraction = float(surface["accumulation"].mean())
    return [
        label,
        f"{int(camera.width)}x{int(camera.height)}",
        f"{volume_seconds:.3f}",
        f"{surface_seconds:.3f}",
        f"{volume_seconds / surface_seconds:.1f}",
        f"{hit_fraction:.2f}",
        f"{psnr(volume['rgb'], reference):.2f}",
        f"{psnr(surface['rgb'], reference):.2f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--steps", type=int, default=300, help="training steps of each short run")
    parser.add_argument("--image-size", type=int, default=64, help="width and height of the synthetic views")
    parser.add_argument("--load-config", type=Path, nargs="*", default=[], help="time these runs instead")
    parser.add_argument("--downscale", type=int, default=1, help="render the view at 1/N of its resolution")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 keeps torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    rows = []
    if args.load_config:
        from neurecon_ns.runs import load_run

        for config_path in args.load_config:
            run = load_run(config_path)
            rows.append(measure(run.pipeline, f"{run.config.method_name} (step {run.step})", args.repeats, args.downscale))
    else:
        from neurecon_ns.data.synthetic import write_scene
        from neurecon_ns.training import train_short

        with tempfile.TemporaryDirectory() as workdir:
            scene = write_scene(Path(workdir) / "scene", num_views=32, width=args.image_size, height=args.image_size)
            for method in args.methods:
                run = train_short(method, scene.output_dir, Path(workdir) / method, args.steps)
                label = f"{method} ({args.steps} steps, Chamfer {run.report.chamfer:.3f})"
                rows.append(measure(run.trainer.pipeline, label, args.repeats, args.downscale))

    header = ["run", "image", "volume s", "surface s", "volume/surface", "hit", "PSNR volume", "PSNR surface"]
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}, torch threads: {torch.get_num_threads()}")
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))


if __name__ == "__main__":
    main()
