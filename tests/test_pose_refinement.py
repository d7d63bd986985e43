"""nerfstudio's camera optimiser (`--pipeline.model.camera-optimizer.mode SO3xR3`) refines poses through every
method: the loss reaches the pose adjustments through the samples' positions."""

import pytest
import torch
from test_cuda_rules import METHODS, tiny_trainer

from neurecon_ns.training import run_iteration


@pytest.mark.parametrize("method", METHODS)
def test_the_loss_reaches_the_camera_poses(method, small_scene, tmp_path, monkeypatch):
    from neurecon_ns import training

    original = training.small_cpu_config

    def with_pose_refinement(*args, **kwargs):
        config = original(*args, **kwargs)
        config.pipeline.model.camera_optimizer.mode = "SO3xR3"
        return config

    monkeypatch.setattr("test_cuda_rules.small_cpu_config", with_pose_refinement)
    torch.manual_seed(0)
    trainer = tiny_trainer(method, small_scene.output_dir, tmp_path)
    poses = trainer.pipeline.model.camera_optimizer.pose_adjustment
    for step in range(3):  # the first step's learning rate is 0 (warm-up)
        run_iteration(trainer, step)
        assert poses.grad is not None and poses.grad.abs().sum() > 0, f"step {step}: no gradient reaches the poses"
    assert poses.detach().abs().sum() > 0, "the poses moved"
