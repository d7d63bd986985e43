"""What the tests that drive the installed console scripts (ns-train, ns-render, neurecon) share.

`TINY_FLAGS` holds, per method, the ns-train flags of a tiny CPU run: small networks and few samples per
ray, so that a few steps take seconds. They size the run; they are not what any test checks. `run_tool`
runs a console script found with `bin_path` and captures its output.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import pytest

from neurecon_ns.utils.precision import cpu_flags, has_bf16_matrix_units

# read at import, before conftest's fixture hides the CPU's bf16 units from the tests
CPU_HAS_BF16_UNITS = has_bf16_matrix_units(cpu_flags())
BF16_ON_BF16_UNITS = pytest.param(
    "bf16", marks=pytest.mark.skipif(not CPU_HAS_BF16_UNITS, reason="bf16 training runs are checked where the CPU has bf16 matrix units")
)
"""The bfloat16 case of a test that trains in both precisions: the paper-size methods' convergence runs take
minutes in bf16 on a CPU that only emulates it, so they run where `auto` would choose bf16."""

# every method: CPU, small batches, a 2-layer geometry MLP without skip connections (`skip-layers` with no
# value), and large eval chunks, which make rendering on CPU faster and change no rendered value
TINY_NETWORKS = [
    "--machine.device-type", "cpu",
    "--pipeline.datamanager.train-num-rays-per-batch", "64",
    "--pipeline.model.networks.geometry.hidden-dim", "32",
    "--pipeline.model.networks.geometry.num-layers", "2",
    "--pipeline.model.networks.geometry.skip-layers",
    "--pipeline.model.networks.geometry.feature-dim", "16",
    "--pipeline.model.networks.radiance.hidden-dim", "32",
    "--pipeline.model.networks.radiance.num-layers", "1",
    "--pipeline.model.eval-num-rays-per-chunk", "4096",
]

# each method's sampler, and the model settings that size its other field queries
TINY_SAMPLERS = {
    "neus-dtu": [
        "--pipeline.model.sampler.num-uniform", "16",
        "--pipeline.model.sampler.num-importance", "16",
        "--pipeline.model.sampler.num-upsample-steps", "2",
    ],
    "volsdf-dtu": [
        "--pipeline.model.sampler.num-initial-samples", "32",
        "--pipeline.model.sampler.num-samples-per-iteration", "16",
        "--pipeline.model.sampler.max-iterations", "2",
        "--pipeline.model.sampler.num-final-samples", "16",
        "--pipeline.model.sampler.num-coarse-kept", "8",
        "--pipeline.model.num-eikonal-uniform-points", "64",
    ],
    "unisurf-dtu": [
        "--pipeline.model.sampler.num-search-steps", "64",
        "--pipeline.model.sampler.num-interval", "16",
        "--pipeline.model.sampler.num-free-space", "8",
    ],
}

# a captured scene's background network, as small as the foreground's
TINY_SAMPLERS["neus-nerfpp"] = [
    *TINY_SAMPLERS["neus-dtu"],
    "--pipeline.model.background-network.hidden-dim", "32",
    "--pipeline.model.background-network.num-layers", "2",
    "--pipeline.model.background-network.skip-layers",
    "--pipeline.model.num-background-samples", "8",
]

TINY_FLAGS: Dict[str, List[str]] = {method: [*TINY_NETWORKS, *sampler] for method, sampler in TINY_SAMPLERS.items()}


def bin_path(name: str) -> str:
    """The console script `name` installed beside the Python that runs the tests."""
    return str(Path(sys.executable).parent / name)


def run_tool(
    command: Sequence[str], cwd: Union[str, Path], env: Optional[Mapping[str, str]] = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run `command` in `cwd` with text output captured; Python warnings are off, so stderr holds what the tool says."""
    env = dict(os.environ if env is None else env, PYTHONWARNINGS="ignore")
    return subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def ns_train_command(
    method: str, data: Union[str, Path], steps: int, output_dir: Union[str, Path] = "outputs", vis: str = "tensorboard"
) -> List[str]:
    """`ns-train <method>` on `data` for `steps` steps with `TINY_FLAGS`, saving a checkpoint at the last step."""
    return [
        bin_path("ns-train"), method, "--data", str(data), "--output-dir", str(output_dir), "--vis", vis,
        "--max-num-iterations", str(steps), "--steps-per-save", str(steps), *TINY_FLAGS[method],
    ]


def train_tiny(method: str, data: Union[str, Path], workdir: Path, steps: int) -> Path:
    """Run `ns_train_command` in `workdir` and return the run's config.yml.

    The run's paths are relative to `workdir` (`config.parents[4]`): commands that load it run there.
    """
    result = run_tool(ns_train_command(method, data, steps), cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    configs = list(workdir.glob(f"outputs/*/{method}/*/config.yml"))
    assert len(configs) == 1, configs
    return configs[0]


def ns_render_interpolate(config: Path, output: Path, output_names: Sequence[str]) -> subprocess.CompletedProcess:
    """`ns-render interpolate` of the run's views into `output` as images at half resolution, run where the run was trained."""
    return run_tool(
        [bin_path("ns-render"), "interpolate", "--load-config", str(config), "--output-path", str(output),
         "--output-format", "images", "--rendered-output-names", *output_names,
         "--interpolation-steps", "1", "--frame-rate", "2", "--downscale-factor", "2"],
        cwd=config.parents[4],
    )
