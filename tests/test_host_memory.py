"""Freed host memory is kept for the next training step instead of being faulted in again."""

import subprocess
import sys

import pytest

FAULTS_OF_A_FRESH_TENSOR = """
import resource, sys, torch
from neurecon_ns.utils.host_memory import keep_freed_host_memory

if sys.argv[1] == "keep":
    assert keep_freed_host_memory()

def page_faults_of_a_64_mib_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 2**20)  # 64 MiB, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

for _ in range(12):  # the first ones map the heap in, until it settles around the small blocks between them
    page_faults_of_a_64_mib_tensor()
print(sum(page_faults_of_a_64_mib_tensor() for _ in range(4)))
"""


def page_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", FAULTS_OF_A_FRESH_TENSOR, mode], capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_freed_large_tensor_is_reused_without_page_faults():
    by_default = page_faults("default")
    if by_default < 4 * 4096:
        pytest.skip(f"this system maps a fresh 64 MiB block in {by_default} faults (huge pages): nothing to save")
    kept = page_faults("keep")
    print(f"measured: {by_default} page faults for four more 64 MiB tensors by default, {kept} with freed memory kept")
    assert kept < by_default / 20


def test_only_the_trainer_changes_the_process_malloc(small_scene, tmp_path, monkeypatch):
    """A process-wide change belongs to the process that trains: building a model (a library embedding it) leaves
    malloc alone; `SurfaceTrainer.setup` on a CPU applies `trainer.keep_freed_host_memory`."""
    import neurecon_ns.engine.trainer as trainer_module
    from neurecon_ns.training import method_config, setup_trainer, small_cpu_config

    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_host_memory", lambda: calls.append(True) or True)
    config = small_cpu_config(method_config("neus-dtu"), small_scene.output_dir, tmp_path, 10, hidden_dim=16, num_layers=2)
    config.pipeline.model.setup(scene_box=None, num_train_data=4)
    assert calls == []
    setup_trainer(config)
    assert calls == [True]
