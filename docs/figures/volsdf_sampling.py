"""Figure for docs/volsdf.md: VolSDF's error-bounded sampler on one ray, round by round.

The ray starts where it enters the object's sphere (radius 1) from a camera 2.5 from the origin, passes
through a sphere of radius 0.6 (its exact SDF) and ends on the scene sphere (R = 3), as `volsdf-dtu`
traces rays. `error_bounded_sampling` runs with the paper's settings; the figure shows the density and
opacity along the ray, the refined set `T` of every round with its bound, and the final samples.

    python docs/figures/volsdf_sampling.py            # writes docs/images/volsdf_sampling.png
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from neurecon_ns.model_components.colliders import ray_sphere_intersections  # noqa: E402
from neurecon_ns.model_components.samplers import ErrorBoundedSamplerConfig, error_bounded_sampling  # noqa: E402
from neurecon_ns.model_components.sdf_to_density import volsdf_density  # noqa: E402

OUTPUT = Path(__file__).resolve().parents[1] / "images" / "volsdf_sampling.png"
BETA = 0.003
OBJECT_RADIUS = 0.6
SCENE_RADIUS = 3.0


def main() -> None:
    origin = torch.tensor([[0.0, 0.0, 2.5]])
    target = torch.tensor([[0.25, 0.0, 0.0]])
    direction = torch.nn.functional.normalize(target - origin, dim=-1)
    near = 2.5 - 1.0 + torch.zeros(1, 1)  # about where it enters the unit sphere
    _, far = ray_sphere_intersections(origin, direction, SCENE_RADIUS)

    def scene_sdf(t: torch.Tensor) -> torch.Tensor:
        points = origin[:, None, :] + direction[:, None, :] * t[..., None]
        radius = points.norm(dim=-1)
        return torch.minimum(radius - OBJECT_RADIUS, SCENE_RADIUS - radius)

    config = ErrorBoundedSamplerConfig()
    result = error_bounded_sampling(near, far, scene_sdf, BETA, config)

    t_dense = torch.linspace(float(near), float(far), 20001)[None]
    sigma = volsdf_density(scene_sdf(t_dense), BETA)
    free_energy = torch.cumulative_trapezoid(sigma, t_dense, dim=-1)
    opacity = 1.0 - torch.exp(-torch.cat([torch.zeros(1, 1), free_energy], dim=-1))

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.6), sharex=True, gridspec_kw={"height_ratios": [1, 1.3]})
    top.plot(t_dense[0], sigma[0] * BETA, color="tab:orange", label=r"density $\sigma\beta = \Psi_\beta(-d)$")
    top.plot(t_dense[0], opacity[0], color="tab:blue", label=r"opacity $O(t)$")
    top.set_ylabel("along the ray")
    top.legend(loc="center right", fontsize=8)
    top.set_title(f"VolSDF error-bounded sampling on one ray (beta = {BETA}, eps = {config.eps})", fontsize=10)

    rounds = len(result.history)
    for index, (t_round, bound) in enumerate(zip(result.history, result.bounds)):
        row = rounds - index
        bound_text = f"B = {float(bound[0]):.2g}" if float(bound[0]) < 1e6 else "B > 1e6"
        bottom.plot(t_round[0], torch.full_like(t_round[0], row), "|", color="tab:gray", markersize=9)
        bottom.text(
            float(far) + 0.05, row, f"round {index + 1}: |T| = {t_round.shape[1]}, {bound_text}",
            va="center", fontsize=8,
        )
    kept = result.t_final[0]
    bottom.plot(kept, torch.zeros_like(kept), "|", color="tab:green", markersize=9)
    bottom.text(float(far) + 0.05, 0, f"final: {kept.numel()} samples", va="center", fontsize=8)
    bottom.set_yticks([])
    bottom.set_xlabel("distance t along the ray (object sphere entry to scene sphere exit)")
    bottom.set_xlim(float(near) - 0.05, float(far) + 1.6)
    bottom.set_ylim(-0.7, rounds + 0.7)
    figure.tight_layout()
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUTPUT, dpi=110)
    print(f"wrote {OUTPUT}: {rounds} rounds, converged={bool(result.converged[0])}")


if __name__ == "__main__":
    main()
