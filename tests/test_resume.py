"""A run stopped at step N and resumed with `--load-dir` ends in the state of a run that never stopped."""

import torch

from neurecon_ns.training import method_config, small_cpu_config, train


def test_resumed_run_ends_in_the_uninterrupted_state(small_scene, tmp_path):
    """neus-fast has every kind of state a run carries: networks, hash grid and its level schedule, NeuS's
    sharpness and slope annealing, the occupancy grid, Adam's moments, the learning-rate schedules."""
    torch.set_num_threads(1)  # one thread: the same seed gives the same numbers
    total = 6

    def config(name, steps, load_dir=None):
        config = small_cpu_config(method_config("neus-fast"), small_scene.output_dir, tmp_path / name, 100, rays_per_batch=64)
        config.max_num_iterations = steps
        config.pipeline.model.occupancy_grid_update_every = 2
        config.pipeline.model.networks.geometry.hash_grid.steps_per_level = 1
        config.load_dir = load_dir
        return config

    uninterrupted = train(config("uninterrupted", total))
    stopped = train(config("stopped", 3))  # steps 0, 1, 2; the checkpoint is step 2's
    checkpoints = stopped.checkpoint_dir
    assert [path.name for path in checkpoints.glob("*.ckpt")] == ["step-000000002.ckpt"]
    resumed = train(config("resumed", total, load_dir=checkpoints))  # --max-num-iterations counts from step 0

    assert resumed.step == uninterrupted.step == total - 1
    assert [path.name for path in resumed.checkpoint_dir.glob("*.ckpt")] == ["step-000000005.ckpt"]
    model, reference = resumed.pipeline.model, uninterrupted.pipeline.model
    assert model.cos_anneal_ratio == reference.cos_anneal_ratio > 0
    assert int(model.field.geometry_network.encoding.active_levels) == int(reference.field.geometry_network.encoding.active_levels)
    assert 0 < model.occupancy_grid.occupied_fraction() < 1  # updated from the SDF after the resume (step 4)
    state, reference_state = model.state_dict(), reference.state_dict()
    assert state.keys() == reference_state.keys()
    for name, value in state.items():
        assert torch.equal(value, reference_state[name]), name
    for group, optimizer in resumed.optimizers.optimizers.items():
        ours, theirs = optimizer.state_dict(), uninterrupted.optimizers.optimizers[group].state_dict()
        assert ours["param_groups"] == theirs["param_groups"], group  # learning rates included
        for index, moments in ours["state"].items():
            for key, value in moments.items():
                assert torch.equal(value, theirs["state"][index][key]), (group, index, key)
    for group, scheduler in resumed.optimizers.schedulers.items():
        assert scheduler.state_dict() == uninterrupted.optimizers.schedulers[group].state_dict(), group
