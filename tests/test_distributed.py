"""Every method under torch.distributed (gloo, two CPU processes): the model wrapped in DDP, a data manager per
process, one step's gradient the mean of the two processes' single-process gradients, the occupancy grid the
same in both, parameters identical after training, checkpoints written by the first process only and loadable.

What needs CUDA is not covered: nerfstudio's own launcher (`ns-train --machine.num-devices N`) and NCCL."""

import copy
from pathlib import Path

import pytest
import torch
from nerfstudio.engine.callbacks import TrainingCallbackLocation
from torch.nn.parallel import DistributedDataParallel

from neurecon_ns.engine.distributed import launch_on_cpu
from neurecon_ns.engine.trainer import set_random_seed
from neurecon_ns.training import method_config, set_model_setting, small_cpu_config

METHODS = ("neus-dtu", "volsdf-dtu", "unisurf-dtu", "neus-fast", "neus-nerfpp", "volsdf-nerfpp")
STEPS = 2


def tiny_config(method: str, data: Path, output_dir: Path):
    config = small_cpu_config(method_config(method), data, output_dir, STEPS, hidden_dim=16, num_layers=2, rays_per_batch=32)
    config.timestamp = "ddp"  # both processes write into one run directory
    model = config.pipeline.model
    if model.background_model == "nerfpp":
        for name, value in (("background_network.hidden_dim", 16), ("background_network.num_layers", 2),
                            ("background_network.skip_layers", ()), ("num_background_samples", 8)):
            set_model_setting(config, name, value)
    if model.occupancy_grid:
        model.occupancy_grid_update_every = 1
    if getattr(model, "num_eikonal_uniform_points", 0):
        model.num_eikonal_uniform_points = 32
    return config


def loss_of(model, outputs, batch):
    return sum(model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch)).values())


def worker(rank: int, world_size: int, data: Path, output_dir: Path) -> None:
    torch.set_num_threads(1)
    results = {}
    for method in METHODS:
        config = tiny_config(method, data, output_dir / method)
        if rank == 0:
            config.save_config()
        set_random_seed(config.machine.seed + rank)
        trainer = config.setup(local_rank=rank, world_size=world_size)
        trainer.setup()
        pipeline, model = trainer.pipeline, trainer.pipeline.model
        assert isinstance(pipeline._model, DistributedDataParallel)
        assert pipeline.world_size == world_size

        # one step's gradient through DDP, and the same step of an unwrapped copy of the model in this process
        pipeline.train()
        for callback in trainer.callbacks:
            callback.run_callback_at_location(0, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        single = copy.deepcopy(model)
        ray_bundle, batch = pipeline.datamanager.next_train(0)
        rays_for_single = copy.deepcopy(ray_bundle)
        generator_state = torch.get_rng_state()
        loss_of(model, pipeline._model(ray_bundle), batch).backward()
        torch.set_rng_state(generator_state)  # the samplers draw the same numbers
        loss_of(single, single(rays_for_single), batch).backward()
        names = [name for name, p in model.named_parameters() if p.grad is not None]
        single_parameters = dict(single.named_parameters())
        result = {
            "rays": batch["indices"].clone(),
            "ddp_gradients": {name: model.get_parameter(name).grad.clone() for name in names},
            "single_gradients": {name: single_parameters[name].grad.clone() for name in names},
        }
        trainer.optimizers.zero_grad_all()

        trainer.train()
        if rank == 1:
            trainer.save_checkpoint(99)  # nerfstudio's main-process check: the second process writes nothing
        result["parameters"] = {name: p.detach().clone() for name, p in model.named_parameters()}
        if model.occupancy_grid is not None:
            result["occupied"] = model.occupancy_grid.occupied.clone()
        result["checkpoint_dir"] = trainer.checkpoint_dir
        results[method] = result
    torch.save(results, output_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(small_scene, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("ddp")
    launch_on_cpu(worker, 2, (small_scene.output_dir, output_dir))
    return [torch.load(output_dir / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


@pytest.mark.parametrize("method", METHODS)
def test_ddp_on_two_cpu_processes(ranks, method, small_scene):
    first, second = ranks[0][method], ranks[1][method]
    # a data manager per process: each draws its own rays
    assert not torch.equal(first["rays"], second["rays"])
    # DDP averages the gradients: both processes hold the mean of the two single-process gradients, which is the
    # gradient of the mean of the two batches' losses (the union's, for a loss that is a mean over rays)
    assert first["ddp_gradients"].keys() == second["ddp_gradients"].keys()
    assert any("field" in name for name in first["ddp_gradients"])
    for name, gradient in first["ddp_gradients"].items():
        mean = (first["single_gradients"][name] + second["single_gradients"][name]) / 2
        torch.testing.assert_close(gradient, mean, rtol=1e-4, atol=1e-7, msg=name)
        torch.testing.assert_close(second["ddp_gradients"][name], gradient, rtol=0, atol=0, msg=name)
    differs = [name for name in first["single_gradients"] if not torch.allclose(first["single_gradients"][name], second["single_gradients"][name])]
    assert differs, "the two processes' own gradients should differ (different rays)"
    # after training, the same parameters and the same occupancy grid everywhere
    for name, value in first["parameters"].items():
        assert torch.equal(value, second["parameters"][name]), name
    if "occupied" in first:
        assert torch.equal(first["occupied"], second["occupied"])
        assert not bool(first["occupied"].all())  # it was updated from the SDF
    # checkpoints: the first process's only (the second one's save of step 99 wrote nothing), and loadable
    checkpoint_dir = first["checkpoint_dir"]
    assert sorted(path.name for path in checkpoint_dir.glob("*.ckpt")) == [f"step-{STEPS - 1:09d}.ckpt"]
    config = tiny_config(method, small_scene.output_dir, checkpoint_dir.parents[3] / "reloaded")
    config.load_dir = checkpoint_dir
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    for name, value in trainer.pipeline.model.named_parameters():
        assert torch.equal(value.detach(), first["parameters"][name]), name
