"""Every method of the plugin, with its defaults side by side.

Registered with nerfstudio through the `nerfstudio.method_configs` entry points in
`pyproject.toml`; `ns-train <name> --help` lists every setting. Names are distinct from
nerfstudio's own (`neus`, `neus-facto`) because a plugin silently replaces a built-in of the same name.
"""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import CosineDecaySchedulerConfig, ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from neurecon_ns.data.datamanager import SurfaceDataManagerConfig
from neurecon_ns.data.neus_dataparser import NeusDataParserConfig
from neurecon_ns.model_components.samplers import NeuSSamplerConfig
from neurecon_ns.models.neus import NeuSModelConfig


# used only when --pipeline.model.camera-optimizer.mode is not "off"
CAMERA_OPTIMIZER = {
    "optimizer": AdamOptimizerConfig(lr=1e-4),
    "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-5, max_steps=100000),
}


def _trainer(method_name: str, max_steps: int, pipeline: VanillaPipelineConfig, optimizers: dict) -> TrainerConfig:
    return TrainerConfig(
        method_name=method_name,
        steps_per_eval_image=5000,
        steps_per_eval_batch=5000,
        steps_per_save=10000,
        steps_per_eval_all_images=1000000,
        max_num_iterations=max_steps,
        mixed_precision=False,
        pipeline=pipeline,
        optimizers=optimizers,
        viewer=ViewerConfig(num_rays_per_chunk=1 << 11),
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
        optimizers={
            "fields": {
                "optimizer": AdamOptimizerConfig(lr=5e-4),
                "scheduler": CosineDecaySchedulerConfig(warm_up_end=5000, learning_rate_alpha=0.05, max_steps=300000),
            },
            "camera_opt": CAMERA_OPTIMIZER,
        },
    ),
    description="NeuS (Wang et al. 2021), paper settings for object captures with masks (DTU)",
)
