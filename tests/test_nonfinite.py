"""A training step whose loss or gradient is NaN or infinite is skipped with one line, and no checkpoint ever
holds a non-finite value."""

import copy

import pytest
import torch

from neurecon_ns.training import method_config, run_iteration, setup_trainer, small_cpu_config


@pytest.fixture
def trainer(small_scene, tmp_path):
    torch.set_num_threads(1)
    config = small_cpu_config(
        method_config("neus-dtu"), small_scene.output_dir, tmp_path, 10, hidden_dim=16, num_layers=2, rays_per_batch=32
    )
    return setup_trainer(config)


def training_state(trainer):
    return copy.deepcopy(
        {
            "model": trainer.pipeline.model.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in trainer.optimizers.optimizers.items()},
            "schedulers": {name: s.state_dict() for name, s in trainer.optimizers.schedulers.items()},
        }
    )


def assert_same(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{index}]")
    else:
        assert a == b, path


def poison_loss_term(trainer, term: str):
    """The next step's `term` is NaN (as a diverging loss would make it); later steps are untouched."""
    model = trainer.pipeline.model
    original = model.get_loss_dict

    def get_loss_dict(*args, **kwargs):
        model.get_loss_dict = original
        loss_dict = original(*args, **kwargs)
        loss_dict[term] = loss_dict[term] * float("nan")
        return loss_dict

    model.get_loss_dict = get_loss_dict


def test_a_nan_loss_term_skips_the_step_and_leaves_the_state(trainer, capsys):
    run_iteration(trainer, 0)
    before = training_state(trainer)
    poison_loss_term(trainer, "eikonal_loss")
    capsys.readouterr()
    run_iteration(trainer, 1)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines == ["step 1: loss term 'eikonal_loss' is NaN; the step is skipped (parameters and optimiser state unchanged)."]
    assert_same(training_state(trainer), before)
    assert trainer.skipped_steps == [1]
    run_iteration(trainer, 2)  # the next step trains again
    after = trainer.pipeline.model.state_dict()
    assert not torch.equal(after["field.geometry_network.layers.0.bias"], before["model"]["field.geometry_network.layers.0.bias"])
    assert all(torch.isfinite(value).all() for value in after.values() if value.is_floating_point())


def test_an_infinite_gradient_skips_the_step_and_names_the_parameter(trainer, capsys):
    run_iteration(trainer, 0)
    before = training_state(trainer)
    variance = trainer.pipeline.model.variance.variance
    hook = variance.register_hook(lambda grad: grad * float("inf"))
    capsys.readouterr()
    run_iteration(trainer, 1)
    hook.remove()
    out = capsys.readouterr().out
    assert "step 1: the gradient of 'variance.variance' is infinite; the step is skipped" in out
    assert_same(training_state(trainer), before)


def test_a_checkpoint_is_never_written_with_non_finite_values(trainer, capsys):
    run_iteration(trainer, 0)
    trainer.save_checkpoint(0)
    checkpoint = trainer.checkpoint_dir / "step-000000000.ckpt"
    written = checkpoint.read_bytes()
    with torch.no_grad():
        trainer.pipeline.model.variance.variance.fill_(float("nan"))
    capsys.readouterr()
    trainer.save_checkpoint(1)
    out = capsys.readouterr().out
    assert "step 1: model._model.variance.variance holds NaN or infinite values; no checkpoint is written" in out
    assert sorted(path.name for path in trainer.checkpoint_dir.iterdir()) == [checkpoint.name]
    assert checkpoint.read_bytes() == written  # the previous checkpoint is kept as it was
