"""`ns-train neus-fast --machine.device-type cpu` trains at the CPU size, says so in one line, and saves that size in
config.yml; `--cpu-size False` keeps the GPU size; a GPU run is untouched."""

import dataclasses

import pytest
import yaml
from nerfstudio.configs.base_config import MachineConfig

from neurecon_ns.training import method_config


def test_cpu_size_is_chosen_on_a_cpu_only_and_can_be_declined():
    registered = method_config("neus-fast")
    on_cpu = dataclasses.replace(registered, machine=MachineConfig(device_type="cpu"), max_num_iterations=2400)
    grid = on_cpu.pipeline.model.networks.geometry.hash_grid
    assert (grid.num_levels, grid.max_resolution, grid.log2_hashmap_size, grid.implementation) == (8, 512, 19, "torch")
    assert grid.quadratic_levels == 1 and registered.pipeline.model.networks.geometry.hash_grid.quadratic_levels == 0
    assert grid.steps_per_level == 2400 // (8 * (8 - grid.initial_levels)), "every level on in the first eighth"
    assert on_cpu.pipeline.datamanager.train_num_rays_per_batch == 512
    assert on_cpu.pipeline.model.networks.gradient == "analytic"
    assert on_cpu.optimizers["fields"]["scheduler"].max_steps == 2400
    model = on_cpu.pipeline.model
    assert (model.mask_loss_weight, model.curvature_loss_weight, model.curvature_points) == (0.5, 3e-3, "surface")
    assert model.grid_smoothness_loss_weight == 1e-2 and registered.pipeline.model.grid_smoothness_loss_weight == 0.0
    assert registered.pipeline.model.curvature_loss_weight == 0.0 and registered.pipeline.model.mask_loss_weight == 0.1
    assert registered.pipeline.model.networks.geometry.hash_grid.num_levels == 16, "the registered method is left as it is"

    kept = dataclasses.replace(registered, machine=MachineConfig(device_type="cpu"), cpu_size=False)
    on_gpu = dataclasses.replace(registered, machine=MachineConfig(device_type="cuda"))
    for config in (kept, on_gpu):
        assert config.pipeline.model.networks.geometry.hash_grid.num_levels == 16
        assert config.pipeline.datamanager.train_num_rays_per_batch == 2048
    paper = dataclasses.replace(method_config("neus-dtu"), machine=MachineConfig(device_type="cpu"))
    assert paper.pipeline.model.networks.geometry.hidden_dim == 256, "the paper methods keep their size on a CPU"


def test_ns_train_command_line_gives_the_cpu_size_and_says_so(tmp_path, capsys, monkeypatch):
    """The config `ns-train neus-fast --machine.device-type cpu ...` parses (ns-train's own tyro parse), as
    nerfstudio then saves it to config.yml."""
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    args = ["neus-fast", "--machine.device-type", "cpu", "--max-num-iterations", "2400", "--output-dir", str(tmp_path)]
    config = tyro.cli(AnnotatedBaseConfigUnion, args=args)
    assert "neus-fast on a CPU: training at the CPU size" in capsys.readouterr().out
    config.set_timestamp()
    config.save_config()
    saved = yaml.load((config.get_base_dir() / "config.yml").read_text(), Loader=yaml.Loader)
    assert saved.pipeline.model.networks.geometry.hash_grid.num_levels == 8
    assert saved.pipeline.datamanager.train_num_rays_per_batch == 512
    declined = tyro.cli(AnnotatedBaseConfigUnion, args=[*args, "--cpu-size", "False"])
    assert declined.pipeline.model.networks.geometry.hash_grid.num_levels == 16
    # what the command line sets is kept; the rest of the CPU size applies
    own_rays = tyro.cli(AnnotatedBaseConfigUnion, args=[*args, "--pipeline.datamanager.train-num-rays-per-batch", "128"])
    assert own_rays.pipeline.datamanager.train_num_rays_per_batch == 128
    assert own_rays.pipeline.model.networks.geometry.hash_grid.num_levels == 8
    # the CPU size's losses give way to the command line's, even where it repeats the preset's value
    own_mask = tyro.cli(AnnotatedBaseConfigUnion, args=[*args, "--pipeline.model.mask-loss-weight", "0.2"])
    assert own_mask.pipeline.model.mask_loss_weight == 0.2
    assert own_mask.pipeline.model.curvature_loss_weight == 3e-3
    off = [*args, "--pipeline.model.curvature-loss-weight", "0"]
    monkeypatch.setattr("sys.argv", ["ns-train", *off])
    assert tyro.cli(AnnotatedBaseConfigUnion, args=off).pipeline.model.curvature_loss_weight == 0.0
    # a setting the command line repeats from the preset is kept too: the GPU preset's central differences
    numerical = [*args, "--pipeline.model.networks.gradient", "numerical"]
    monkeypatch.setattr("sys.argv", ["ns-train", *numerical])
    chosen = tyro.cli(AnnotatedBaseConfigUnion, args=numerical)
    assert chosen.pipeline.model.networks.gradient == "numerical"
    assert chosen.pipeline.model.networks.geometry.hash_grid.num_levels == 8
    # README's real-scan command: 3600 iterations, the levels on by step 448; the grid smoothness term and the
    # quadratic coarsest level can be switched off from the command line
    real_scan = ["neus-fast", "--machine.device-type", "cpu", "--max-num-iterations", "3600", "--output-dir", str(tmp_path),
                 "--pipeline.model.grid-smoothness-loss-weight", "0", "--pipeline.model.networks.geometry.hash-grid.quadratic-levels", "0"]
    monkeypatch.setattr("sys.argv", ["ns-train", *real_scan])
    parsed = tyro.cli(AnnotatedBaseConfigUnion, args=real_scan)
    grid = parsed.pipeline.model.networks.geometry.hash_grid
    assert (grid.num_levels, grid.max_resolution, grid.log2_hashmap_size, grid.steps_per_level) == (8, 512, 19, 112)
    assert parsed.pipeline.model.grid_smoothness_loss_weight == 0.0 and grid.quadratic_levels == 0


def test_benchmark_settings_reach_the_model_the_trainer_and_the_optimizers():
    from neurecon_ns.errors import UserInputError
    from neurecon_ns.training import apply_model_settings

    config = method_config("neus-fast")
    apply_model_settings(
        config,
        ["sampler.num_uniform=16", "trainer.keep_freed_host_memory=False", "trainer.optimizers.variance.optimizer.lr=3e-3"],
    )
    assert config.pipeline.model.sampler.num_uniform == 16
    assert config.keep_freed_host_memory is False
    assert config.optimizers["variance"]["optimizer"].lr == 3e-3
    assert config.optimizers["fields"]["optimizer"].lr == 1e-2
    with pytest.raises(UserInputError, match="NAME=VALUE"):
        apply_model_settings(config, ["sampler.num_uniform"])
