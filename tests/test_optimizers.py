"""Every method's Adam runs torch's fused update on a CPU: the same parameters as the default update within float32
rounding, and the same checkpoint state."""

import copy

import pytest
import torch

from neurecon_ns.engine.optimizers import FusedAdamOptimizerConfig
from neurecon_ns.training import method_config


def grid_and_network_parameters(seed: int):
    """A hash-grid-like table and a small layer, with gradients of every sign and scale."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.nn.Parameter(torch.rand(4096, 2, generator=generator) * 2e-4 - 1e-4)
    weight = torch.nn.Parameter(torch.randn(16, 8, generator=generator))
    return [table, weight]


def take_steps(optimizer, parameters, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for parameter in parameters:
            parameter.grad = torch.randn(parameter.shape, generator=generator) * 10.0 ** torch.randint(-6, 1, (), generator=generator)
            # rows a step's rays did not reach get a zero gradient, as a hash grid's do
            parameter.grad[torch.rand(parameter.shape[0], generator=generator) < 0.5] = 0.0
        optimizer.step()


@pytest.mark.parametrize("method", ["neus-fast", "neus-dtu", "volsdf-dtu", "unisurf-dtu"])
def test_every_method_builds_a_fused_adam_on_a_cpu(method):
    config = method_config(method)
    for group, settings in config.optimizers.items():
        optimizer = settings["optimizer"].setup(params=grid_and_network_parameters(0))
        assert isinstance(optimizer, torch.optim.Adam), group
        assert optimizer.defaults["fused"] is True, group


def test_fused_update_matches_the_default_update():
    config = FusedAdamOptimizerConfig(lr=1e-2, eps=1e-15)
    fused_parameters, default_parameters = grid_and_network_parameters(0), grid_and_network_parameters(0)
    fused = config.setup(params=fused_parameters)
    default = FusedAdamOptimizerConfig(lr=1e-2, eps=1e-15, fused=False).setup(params=default_parameters)
    assert not default.defaults["fused"]
    take_steps(fused, fused_parameters, 20, seed=1)
    take_steps(default, default_parameters, 20, seed=1)
    for ours, theirs, initial in zip(fused_parameters, default_parameters, grid_and_network_parameters(0)):
        assert (ours - initial).abs().max() > 1e-3  # the steps moved it
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_a_checkpoint_of_either_update_continues_in_the_other():
    """Runs saved before the update was fused (or with `fused: false`) resume with the fused one, and back."""
    config = FusedAdamOptimizerConfig(lr=1e-3)
    for save_fused, load_fused in ((False, True), (True, False)):
        saved_parameters = grid_and_network_parameters(0)
        saved = FusedAdamOptimizerConfig(lr=1e-3, fused=save_fused).setup(params=saved_parameters)
        take_steps(saved, saved_parameters, 5, seed=2)
        resumed_parameters = [torch.nn.Parameter(p.detach().clone()) for p in saved_parameters]
        resumed = FusedAdamOptimizerConfig(lr=1e-3, fused=load_fused).setup(params=resumed_parameters)
        # a copy, as a checkpoint read from disk is: loading keeps the tensors it is given
        resumed.load_state_dict(copy.deepcopy(saved.state_dict()))
        take_steps(saved, saved_parameters, 5, seed=3)
        take_steps(resumed, resumed_parameters, 5, seed=3)
        for ours, theirs in zip(resumed_parameters, saved_parameters):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    assert config.fused is None


def test_parameters_on_a_device_without_the_kernel_take_the_default_update():
    parameters = [torch.nn.Parameter(torch.zeros(4, 2, device="meta"))]
    assert not FusedAdamOptimizerConfig().setup(params=parameters).defaults["fused"]
