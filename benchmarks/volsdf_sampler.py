"""Cost of VolSDF's error-bounded sampler (Algorithm 1) per ray, on the CPU.

Rays of 1024-ray batches from cameras 2.5-3.0 from the origin (the synthetic scenes' range), through
the object's sphere to the scene sphere (R = 3), exactly as `volsdf-dtu` traces them. Two fields:

- `analytic`: the exact SDF of a sphere of radius 0.6 (the sampler's own cost: bounds, bisection,
  inverse transform sampling), at several `beta` (0.1 is the initial value, trained runs reach ~0.01-0.003);
- `network`: the paper's 8 x 256 geometry MLP at its sphere initialisation, at beta = 0.1, where the
  no-gradient SDF queries of the sampler dominate.

Per setting it prints SDF queries per ray (what the refined set `T` cost), the samples per ray handed
to the field, the mean number of rounds, the share of rays whose bound held with `beta`, and seconds
per 1000 rays (median of `--repeats` runs).

    python benchmarks/volsdf_sampler.py                  # paper settings (128 + 4 x 128, 64 + 32 kept)
    python benchmarks/volsdf_sampler.py --cpu-sized      # the settings `training.small_cpu_config` uses
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox

from neurecon_ns.model_components.samplers import error_bounded_sampling, points_along_rays
from neurecon_ns.models.volsdf import VolSDFModel
from neurecon_ns.training import _shrink_sampler, method_config


def camera_rays(num_rays: int, seed: int) -> RayBundle:
    """Rays from random cameras on a shell of radius 2.5-3.0, aimed at random points of the unit ball."""
    generator = torch.Generator().manual_seed(seed)
    directions_out = torch.nn.functional.normalize(torch.randn(num_rays, 3, generator=generator), dim=-1)
    origins = directions_out * (2.5 + 0.5 * torch.rand(num_rays, 1, generator=generator))
    targets = torch.nn.functional.normalize(torch.randn(num_rays, 3, generator=generator), dim=-1)
    targets = targets * torch.rand(num_rays, 1, generator=generator) ** (1.0 / 3.0)
    directions = torch.nn.functional.normalize(targets - origins, dim=-1)
    return RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(num_rays, 1))


def build_model(cpu_sized: bool) -> VolSDFModel:
    config = method_config("volsdf-dtu").pipeline.model
    if cpu_sized:
        _shrink_sampler(config)
    return config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]])), num_train_data=1)


def measure(model: VolSDFModel, ray_bundle: RayBundle, field: str, beta: float, repeats: int) -> dict:
    ray_bundle = model.collider(ray_bundle)
    if field == "analytic":

        def level_set(points):
            return points.norm(dim=-1) - 0.6

    else:
        level_set = model.level_set

    def scene_sdf_along_rays(t):
        points = points_along_rays(ray_bundle, t)
        return model.with_scene_sphere(level_set(points), points)

    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = error_bounded_sampling(
            ray_bundle.nears, ray_bundle.fars, scene_sdf_along_rays, beta, model.config.sampler, training=False
        )
        seconds.append(time.perf_counter() - started)
    num_rays = ray_bundle.origins.shape[0]
    return {
        "field": field,
        "beta": beta,
        "sdf_queries_per_ray": result.t_refined.shape[1],
        "samples_per_ray": result.t_final.shape[1],
        "mean_rounds": float(result.iterations.float().mean()),
        "converged": float(result.converged.float().mean()),
        "seconds_per_1k_rays": statistics.median(seconds) * 1000.0 / num_rays,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-rays", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-sized", action="store_true", help="the sampler settings of small_cpu_config")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.cpu_sized)
    model.eval()
    sampler = model.config.sampler
    print(
        f"sampler: {sampler.num_initial_samples} initial + up to {sampler.max_iterations - 1} x "
        f"{sampler.num_samples_per_iteration}, eps {sampler.eps}, {sampler.num_final_samples} final + "
        f"{sampler.num_coarse_kept} kept; {args.num_rays} rays; {torch.get_num_threads()} torch threads"
    )
    rows = [measure(model, camera_rays(args.num_rays, 0), "analytic", beta, args.repeats) for beta in (0.1, 0.01, 0.003)]
    with torch.no_grad():
        rows.append(measure(model, camera_rays(args.num_rays, 0), "network", float(model.density.beta()), args.repeats))
    header = ("field", "beta", "SDF queries/ray", "samples/ray", "rounds", "converged", "s / 1k rays")
    print(" | ".join(header))
    for row in rows:
        print(
            f"{row['field']} | {row['beta']:.3f} | {row['sdf_queries_per_ray']} | {row['samples_per_ray']} | "
            f"{row['mean_rounds']:.2f} | {row['converged']:.3f} | {row['seconds_per_1k_rays']:.3f}"
        )


if __name__ == "__main__":
    main()
