"""Seconds to make the rgb | normal | mesh showcase of a run: mesh extraction, then the video, per render mode.

    .venv/bin/python benchmarks/showcase_video.py --load-config RUN/config.yml --views 3 14 12 \
        --frames 60 --resolution 200 150 --modes volume surface

Prints wall-clock and process CPU seconds (the CPU seconds do not depend on what else runs on the machine;
wall seconds do), split into surface extraction, model panels and mesh panel.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neurecon_ns.mesh.model_mesh import extract_model_surface
from neurecon_ns.render.camera_paths import camera_path_dict, make_camera_path, vertical_fov_deg
from neurecon_ns.render.rasterize import MeshRenderer
from neurecon_ns.render.video import overridden_render_mode, read_camera_path, write_showcase
from neurecon_ns.runs import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-config", type=Path, required=True)
    parser.add_argument("--kind", default="small-circle")
    parser.add_argument("--views", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--resolution", type=int, nargs=2, default=(200, 150))
    parser.add_argument("--mesh-resolution", type=int, default=256)
    parser.add_argument("--modes", nargs="+", default=["volume", "surface"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    run = load_run(args.load_config)
    model = run.model
    cameras = run.pipeline.datamanager.train_dataset.cameras
    train_c2w = np.tile(np.eye(4), (len(cameras), 1, 1))
    train_c2w[:, :3, :4] = cameras.camera_to_worlds.numpy()
    path_c2w = make_camera_path(args.kind, train_c2w, args.views, args.frames, loop=True)
    fov = vertical_fov_deg(float(cameras.fy[0]), float(cameras.height[0]))
    width, height = args.resolution

    with tempfile.TemporaryDirectory() as workdir:
        path_json = Path(workdir) / "path.json"
        path_json.write_text(json.dumps(camera_path_dict(path_c2w, fov, width, height, fps=30.0)))
        path_cameras, fps = read_camera_path(path_json)

        wall, cpu = time.perf_counter(), time.process_time()
        mesh = extract_model_surface(model, resolution=args.mesh_resolution)
        print(f"surface extraction at {args.mesh_resolution}: {len(mesh.faces)} faces, "
              f"{time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU")
        renderer = MeshRenderer(mesh)
        for mode in args.modes:
            wall, cpu = time.perf_counter(), time.process_time()
            with overridden_render_mode(model, mode):
                times = write_showcase(Path(workdir) / f"{mode}.mp4", path_cameras, fps, model=model,
                                       mesh_renderer=renderer, progress=False)
            print(f"{mode:>8}: {args.frames} frames at {width}x{height}, rgb | normal | mesh: "
                  f"{times.total_seconds:.1f} s wall ({times.model_seconds:.1f} model, {times.mesh_seconds:.1f} mesh), "
                  f"{time.process_time() - cpu:.1f} s CPU, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
