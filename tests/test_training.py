"""`training.run_iteration`, the step the benchmarks time, is the step `ns-train` takes."""

import torch

from neurecon_ns.training import method_config, run_iteration, setup_trainer, small_cpu_config, train


def test_run_iteration_trains_exactly_as_the_trainer_does(small_scene, tmp_path):
    """neus-fast has every kind of per-step schedule (grid levels, sharpness annealing, occupancy grid):
    three seeded steps through `run_iteration` and through `Trainer.train` end in the same state."""
    torch.set_num_threads(1)  # one thread: the same seed gives the same numbers
    steps = 3

    def config(name):
        config = small_cpu_config(method_config("neus-fast"), small_scene.output_dir, tmp_path / name, 100)
        config.max_num_iterations = steps
        config.pipeline.model.occupancy_grid_update_every = 1
        config.pipeline.model.networks.geometry.hash_grid.steps_per_level = 1
        return config

    by_loop = setup_trainer(config("loop"))
    for step in range(steps):
        run_iteration(by_loop, step)
    by_trainer = train(config("trainer"))

    loop_model, trainer_model = by_loop.pipeline.model, by_trainer.pipeline.model
    assert loop_model.cos_anneal_ratio == trainer_model.cos_anneal_ratio > 0
    assert loop_model.occupancy_grid.occupied_fraction() < 1.0  # the grid was updated from the SDF
    loop_state, trainer_state = loop_model.state_dict(), trainer_model.state_dict()
    assert loop_state.keys() == trainer_state.keys()
    for name, value in loop_state.items():
        assert torch.equal(value, trainer_state[name]), name
