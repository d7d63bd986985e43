"""A newcomer's `neurecon demo` and `ns-train` on a CPU print progress and results, not warnings."""

import os
import subprocess
import warnings

from helpers import bin_path, ns_train_command

from neurecon_ns.quiet import UPSTREAM_WARNINGS, install_warning_filters


def run_with_warnings_shown(command, cwd):
    env = {name: value for name, value in os.environ.items() if name != "PYTHONWARNINGS"}
    env["COLUMNS"] = "160"  # rich's width when the output is not a terminal: the whole progress line
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def warning_lines(stderr: str):
    return [line for line in stderr.splitlines() if "Warning:" in line]


# one message each filter should match, as upstream words it, with the module that warns it
UPSTREAM_EXAMPLES = [
    (UserWarning, "Using a non-tuple sequence for multidimensional indexing is deprecated and will be changed", "nerfstudio.cameras.cameras"),
    (FutureWarning, "`torch.cuda.amp.custom_bwd(args...)` is deprecated.", "nerfstudio.field_components.activations"),
    (FutureWarning, "`torch.cuda.amp.GradScaler(args...)` is deprecated.", "nerfstudio.engine.trainer"),
    (UserWarning, "torch.cuda.amp.GradScaler is enabled, but CUDA is not available.  Disabling.", "torch.cuda.amp.grad_scaler"),
    (UserWarning, "This DataLoader will create 8 worker processes in total.", "torch.utils.data.dataloader"),
    (FutureWarning, "`torch.jit.script` is deprecated. Please switch to `torch.compile`", "torch.jit._script"),
]


def test_filters_match_only_the_listed_module():
    """Each filtered message is hidden from its upstream module and still shown when any other module warns it."""
    assert len(UPSTREAM_EXAMPLES) == len(UPSTREAM_WARNINGS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        install_warning_filters()
        for category, message, module in UPSTREAM_EXAMPLES:
            warnings.warn_explicit(message, category, "upstream.py", 1, module=module)
            warnings.warn_explicit(message, category, "plugin.py", 1, module="neurecon_ns.models.surface_model")
    assert [w.filename for w in caught] == ["plugin.py"] * len(UPSTREAM_EXAMPLES)


def test_a_grad_scaler_made_on_a_cpu_is_quiet():
    """nerfstudio makes an enabled scaler for `neus-fast` (mixed precision) on a CPU too; torch then warns."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        install_warning_filters()
        torch.cuda.amp.GradScaler(enabled=not torch.cuda.is_available())
    assert [str(w.message) for w in caught if "CUDA is not available" in str(w.message)] == []


def test_neurecon_demo_shows_progress_and_no_warnings(tmp_path):
    result = run_with_warnings_shown(
        [bin_path("neurecon"), "demo", "--output-dir", str(tmp_path / "demo"), "--steps", "3", "--num-views", "4",
         "--image-size", "24", "--mesh-resolution", "32"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert warning_lines(result.stderr) == [], result.stderr
    progress = [line for line in result.stdout.splitlines() if line.startswith("training ")]
    assert progress and "step 3/3" in progress[-1] and "loss " in progress[-1] and "left" in progress[-1], result.stdout
    assert "Chamfer" in result.stdout


def test_ns_train_shows_no_warnings_of_the_plugin_or_known_upstream_ones(small_scene, tmp_path):
    result = run_with_warnings_shown(ns_train_command("neus-dtu", small_scene.output_dir, steps=3), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # nerfstudio imports its camera utilities, which warn about torch.jit.script, before it loads any plugin
    assert [line for line in warning_lines(result.stderr) if "torch.jit.script" not in line] == [], result.stderr
    assert "Training Finished" in result.stdout
