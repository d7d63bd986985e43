"""Every method of the plugin, side by side: what each one sets.

The papers' values are the defaults of the plugin's own configs (`NeuSModelConfig`, `VolSDFModelConfig`,
`UnisurfModelConfig`, their samplers', the networks'), each written once there; a method here sets only what
differs from them, and every setting of nerfstudio's own configs (rays per batch, optimisers, schedules) in
full. Registered with nerfstudio through the `nerfstudio.method_configs` entry points in `pyproject.toml`;
`ns-train <name> --help` lists every setting with its value. Names are distinct from nerfstudio's own (`neus`,
`neus-facto`) because a plugin silently replaces a built-in of the same name.
"""

from __future__ import annotations

from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.schedulers import (
    CosineDecaySchedulerConfig,
    ExponentialDecaySchedulerConfig,
    MultiStepSchedulerConfig,
)
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from neurecon_ns.data.datamanager import SurfaceDataManagerConfig
from neurecon_ns.data.neus_dataparser import NeusDataParserConfig
from neurecon_ns.engine.optimizers import FusedAdamOptimizerConfig
from neurecon_ns.engine.trainer import SurfaceTrainerConfig
from neurecon_ns.fields.sdf_field import GeometryNetworkConfig, RadianceNetworkConfig, SurfaceFieldConfig
from neurecon_ns.model_components.samplers import NeuSSamplerConfig
from neurecon_ns.models.neus import NeuSModelConfig
from neurecon_ns.models.unisurf import UnisurfModelConfig
from neurecon_ns.models.volsdf import VolSDFModelConfig

# used only when --pipeline.model.camera-optimizer.mode is not "off"
CAMERA_OPTIMIZER = {
    "optimizer": FusedAdamOptimizerConfig(lr=1e-4),
    "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-5, max_steps=100000),
}


def neus_paper_optimizers() -> dict:
    """NeuS's schedule (lr 5e-4, 5k warm-up, cosine decay to 5% over 300k steps) for the networks and, as in
    the paper, for the variance."""
    def schedule() -> dict:
        return {
            "optimizer": FusedAdamOptimizerConfig(lr=5e-4),
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
            model=NeuSModelConfig(mask_loss_weight=0.1, eval_num_rays_per_chunk=1024),
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
            model=UnisurfModelConfig(eval_num_rays_per_chunk=1024),
        ),
        optimizers={
            "fields": {
                "optimizer": FusedAdamOptimizerConfig(lr=1e-4),
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
            model=VolSDFModelConfig(eikonal_radius=3.0, eval_num_rays_per_chunk=1024),
        ),
        optimizers={
            "fields": {
                "optimizer": FusedAdamOptimizerConfig(lr=5e-4),
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
            model=NeuSModelConfig(background_model="nerfpp", eval_num_rays_per_chunk=1024),
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
                # the NeRF++ background replaces the scene sphere: rays must leave the unit sphere transparent
                scene_sphere_background=False,
                background_model="nerfpp",
                eval_num_rays_per_chunk=1024,
            ),
        ),
        optimizers={
            "fields": {
                "optimizer": FusedAdamOptimizerConfig(lr=5e-4),
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
                mask_loss_weight=0.1,
                cos_anneal_end=2000,
            ),
        ),
        optimizers={
            "fields": {
                "optimizer": FusedAdamOptimizerConfig(lr=1e-2, eps=1e-15),
                "scheduler": CosineDecaySchedulerConfig(warm_up_end=500, learning_rate_alpha=0.05, max_steps=20000),
            },
            "variance": {
                "optimizer": FusedAdamOptimizerConfig(lr=1e-3),
                "scheduler": CosineDecaySchedulerConfig(warm_up_end=500, learning_rate_alpha=0.05, max_steps=20000),
            },
            "camera_opt": CAMERA_OPTIMIZER,
        },
        mixed_precision=True,
    ),
    description="NeuS on a multi-resolution hash grid (tiny-cuda-nn or torch), numerical gradients, "
    "empty-space skipping, mixed precision on GPU: minutes instead of hours",
)
