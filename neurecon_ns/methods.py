"""Every method of the plugin, with its defaults side by side.

Registered with nerfstudio through the `nerfstudio.method_configs` entry points in
`pyproject.toml`; `ns-train <name> --help` lists every setting. Names are distinct from
nerfstudio's own (`neus`, `neus-facto`) because a plugin silently replaces a built-in of the same name.
"""

from __future__ import annotations

from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import (
    CosineDecaySchedulerConfig,
    ExponentialDecaySchedulerConfig,
    MultiStepSchedulerConfig,
)
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from neurecon_ns.data.datamanager import SurfaceDataManagerConfig
from neurecon_ns.data.neus_dataparser import NeusDataParserConfig
from neurecon_ns.engine.trainer import SurfaceTrainerConfig
from neurecon_ns.fields.background import BackgroundFieldConfig
from neurecon_ns.fields.hash_encoding import HashGridConfig
from neurecon_ns.fields.sdf_field import GeometryNetworkConfig, RadianceNetworkConfig, SurfaceFieldConfig
from neurecon_ns.model_components.samplers import ErrorBoundedSamplerConfig, NeuSSamplerConfig, UnisurfSamplerConfig
from neurecon_ns.models.neus import NeuSModelConfig
from neurecon_ns.models.unisurf import UnisurfModelConfig
from neurecon_ns.models.volsdf import VolSDFModelConfig

# used only when --pipeline.model.camera-optimizer.mode is not "off"
CAMERA_OPTIMIZER = {
    "optimizer": AdamOptimizerConfig(lr=1e-4),
    "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-5, max_steps=100000),
}


def neus_paper_optimizers() -> dict:
    """NeuS's schedule (lr 5e-4, 5k warm-up, cosine decay to 5% over 300k steps) for the networks and, as in
    the paper, for the variance."""
    def schedule() -> dict:
        return {
            "optimizer": AdamOptimizerConfig(lr=5e-4),
            "scheduler": CosineDecaySchedulerConfig(warm_up_end=5000, learning_rate_alpha=0.05, max_steps=300000),
        }

    return {"fields": schedule(), "variance": schedule(), "camera_opt": dict(CAMERA_OPTIMIZER)}


def _trainer(
    method_name: str, max_steps: int, pipeline: VanillaPipelineConfig, optimizers: dict, mixed_precision: bool = False
) -> SurfaceTrainerConfig:
    return SurfaceTrainerConfig(
        method_name=method_name,
        steps_per_eval_image=5000,
        steps_per_eval_batch=5000,
        steps_per_save=10000,
        steps_per_eval_all_images=1000000,
        max_num_iterations=max_steps,
        mixed_precision=mixed_precision,  # nerfstudio turns it off on CPU
        pipeline=pipeline,
        optimizers=optimizers,
        vis="viewer",
    )


neus_dtu = MethodSpecification(
    config=_trainer(
        "neus-dtu",
        max_steps=300000,
        pipeline=VanillaPipelineConfig(
            datamanager=SurfaceDataManagerConfig(
                dataparser=NeusDataParserConfig(),
                train_num_rays_per_batch=512,
                eval_num_rays_per_batch=512,
            ),
            model=NeuSModelConfig(
                sampler=NeuSSamplerConfig(num_uniform=64, num_importance=64, num_upsample_steps=4),
                eikonal_loss_weight=0.1,
                mask_loss_weight=0.1,
                background_color="black",
                cos_anneal_end=50000,
                eval_num_rays_per_chunk=1024,
            ),
        ),
        optimizers=neus_paper_optimizers(),
    ),
    description="NeuS (Wang et al. 2021), paper settings for object captures with masks (DTU)",
)


unisurf_dtu = MethodSpecification(
    config=_trainer(
        "unisurf-dtu",
        max_steps=450000,
        pipeline=VanillaPipelineConfig(
            datamanager=SurfaceDataManagerConfig(
                dataparser=NeusDataParserConfig(),
                train_num_rays_per_batch=1024,
                eval_num_rays_per_batch=1024,
            ),
            model=UnisurfModelConfig(
                sampler=UnisurfSamplerConfig(
                    num_search_steps=256,
                    num_secant_steps=8,
                    num_interval=64,
                    num_free_space=32,
                    interval_max=1.0,
                    interval_min=0.05,
                    interval_decay=1.5e-5,
                ),
                logit_scale=10.0,
                eikonal_loss_weight=0.0,
                mask_loss_weight=0.0,
                normal_smoothness_loss_weight=0.005,
                normal_perturbation=0.01,
                background_color="black",
                eval_num_rays_per_chunk=1024,
            ),
        ),
        optimizers={
            "fields": {
                "optimizer": AdamOptimizerConfig(lr=1e-4),
                "scheduler": MultiStepSchedulerConfig(max_steps=450000, gamma=0.5, milestones=(200000, 400000)),
            },
            "camera_opt": CAMERA_OPTIMIZER,
        },
    ),
    description="UNISURF (Oechsle et al. 2021), paper settings for DTU (no masks)",
)


volsdf_dtu = MethodSpecification(
    config=_trainer(
        "volsdf-dtu",
        max_steps=100000,
        pipeline=VanillaPipelineConfig(
            datamanager=SurfaceDataManagerConfig(
                dataparser=NeusDataParserConfig(),
                train_num_rays_per_batch=1024,
                eval_num_rays_per_batch=1024,
            ),
            model=VolSDFModelConfig(
                sampler=ErrorBoundedSamplerConfig(
                    num_initial_samples=128,
                    num_samples_per_iteration=128,
                    max_iterations=5,
                    eps=0.1,
                    num_bisection_steps=10,
                    num_final_samples=64,
                    num_coarse_kept=32,
                ),
                init_beta=0.1,
                beta_min=1e-4,
                scene_sphere_background=True,
                scene_sphere_radius=3.0,
                eikonal_loss_weight=0.1,
                eikonal_radius=3.0,
                num_eikonal_uniform_points=1024,
                mask_loss_weight=0.0,
                background_color="black",
                eval_num_rays_per_chunk=1024,
            ),
        ),
        optimizers={
            "fields": {
                "optimizer": AdamOptimizerConfig(lr=5e-4),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=5e-5, max_steps=100000),
            },
            "camera_opt": CAMERA_OPTIMIZER,
        },
    ),
    description="VolSDF (Yariv et al. 2021), paper settings for DTU (scene sphere as background, no masks)",
)


# -- captures without masks: the object in the unit sphere, NeRF++ behind it -----------------------------
# The data parser defaults to nerfstudio-data (what `ns-process-data` writes for a phone capture); any
# other parser works too (`ns-train neus-nerfpp colmap --data ...`): the data manager puts the region the
# cameras look at into the unit sphere (see neurecon_ns/data/normalize.py and docs/own_capture.md).

neus_nerfpp = MethodSpecification(
    config=_trainer(
        "neus-nerfpp",
        max_steps=300000,
        pipeline=VanillaPipelineConfig(
            datamanager=SurfaceDataManagerConfig(
                dataparser=NerfstudioDataParserConfig(),
                train_num_rays_per_batch=512,
                eval_num_rays_per_batch=512,
            ),
            model=NeuSModelConfig(
                sampler=NeuSSamplerConfig(num_uniform=64, num_importance=64, num_upsample_steps=4),
                background_model="nerfpp",
                background_network=BackgroundFieldConfig(
                    num_layers=8, hidden_dim=256, skip_layers=(4,), num_frequencies=10, num_direction_frequencies=4
                ),
                num_background_samples=32,
                eikonal_loss_weight=0.1,
                mask_loss_weight=0.0,
                cos_anneal_end=50000,
                eval_num_rays_per_chunk=1024,
            ),
        ),
        optimizers=neus_paper_optimizers(),
    ),
    description="NeuS with a NeRF++ background, for captures without masks (NeuS's BlendedMVS 'womask' settings)",
)


volsdf_nerfpp = MethodSpecification(
    config=_trainer(
        "volsdf-nerfpp",
        max_steps=100000,
        pipeline=VanillaPipelineConfig(
            datamanager=SurfaceDataManagerConfig(
                dataparser=NerfstudioDataParserConfig(),
                train_num_rays_per_batch=1024,
                eval_num_rays_per_batch=1024,
            ),
            model=VolSDFModelConfig(
                sampler=ErrorBoundedSamplerConfig(
                    num_initial_samples=128,
                    num_samples_per_iteration=128,
                    max_iterations=5,
                    eps=0.1,
                    num_bisection_steps=10,
                    num_final_samples=64,
                    num_coarse_kept=32,
                ),
                init_beta=0.1,
                beta_min=1e-4,
                # the NeRF++ background replaces the scene sphere: rays must leave the unit sphere transparent
                scene_sphere_background=False,
                background_model="nerfpp",
                background_network=BackgroundFieldConfig(
                    num_layers=8, hidden_dim=256, skip_layers=(4,), num_frequencies=10, num_direction_frequencies=4
                ),
                num_background_samples=32,
                eikonal_loss_weight=0.1,
                num_eikonal_uniform_points=1024,
                mask_loss_weight=0.0,
                eval_num_rays_per_chunk=1024,
            ),
        ),
        optimizers={
            "fields": {
                "optimizer": AdamOptimizerConfig(lr=5e-4),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=5e-5, max_steps=100000),
            },
            "camera_opt": CAMERA_OPTIMIZER,
        },
    ),
    description="VolSDF with a NeRF++ background instead of the scene sphere, for captures without masks (BlendedMVS)",
)


neus_fast = MethodSpecification(
    config=_trainer(
        "neus-fast",
        max_steps=20000,
        pipeline=VanillaPipelineConfig(
            datamanager=SurfaceDataManagerConfig(
                dataparser=NeusDataParserConfig(),
                train_num_rays_per_batch=2048,
                eval_num_rays_per_batch=2048,
            ),
            model=NeuSModelConfig(
                networks=SurfaceFieldConfig(
                    geometry=GeometryNetworkConfig(
                        encoding="hash",
                        hash_grid=HashGridConfig(
                            num_levels=16,
                            features_per_level=2,
                            log2_hashmap_size=19,
                            min_resolution=16,
                            max_resolution=2048,
                            initial_levels=4,
                            steps_per_level=500,
                        ),
                        num_layers=2,
                        hidden_dim=64,
                        skip_layers=(),
                        feature_dim=32,
                        use_weight_norm=False,
                    ),
                    radiance=RadianceNetworkConfig(num_layers=2, hidden_dim=64, use_weight_norm=False),
                    gradient="numerical",
                ),
                sampler=NeuSSamplerConfig(num_uniform=32, num_importance=32, num_upsample_steps=2),
                occupancy_grid=True,
                occupancy_grid_resolution=64,
                eikonal_loss_weight=0.1,
                mask_loss_weight=0.1,
                background_color="black",
                cos_anneal_end=2000,
                eval_num_rays_per_chunk=4096,
            ),
        ),
        optimizers={
            "fields": {
                "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
                "scheduler": CosineDecaySchedulerConfig(warm_up_end=500, learning_rate_alpha=0.05, max_steps=20000),
            },
            "variance": {
                "optimizer": AdamOptimizerConfig(lr=1e-3),
                "scheduler": CosineDecaySchedulerConfig(warm_up_end=500, learning_rate_alpha=0.05, max_steps=20000),
            },
            "camera_opt": CAMERA_OPTIMIZER,
        },
        mixed_precision=True,
    ),
    description="NeuS on a multi-resolution hash grid (tiny-cuda-nn or torch), numerical gradients, "
    "empty-space skipping, mixed precision on GPU: minutes instead of hours",
)
