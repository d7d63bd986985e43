"""Filters for the warnings that nerfstudio 1.1.5 and torch print on every CPU run, none of which a user can act on.

Installed when the package is imported (`neurecon_ns/__init__.py`), which is how both entry points start:
`ns-train` imports the plugin while it collects methods, and `neurecon` imports it first. Each filter
matches one message from one module, so the same warning from any other code still shows:

| module | message | why it is noise here |
| --- | --- | --- |
| `nerfstudio.cameras.cameras` | non-tuple sequence for multidimensional indexing | nerfstudio's camera indexing, on every ray batch; still correct in torch 2.x |
| `nerfstudio.field_components.activations` | `torch.cuda.amp.custom_fwd/custom_bwd` deprecated | nerfstudio's import, no effect on the plugin |
| `nerfstudio.engine.trainer` | `torch.cuda.amp.GradScaler` deprecated | nerfstudio builds its scaler this way; disabled on a CPU |
| `torch.cuda.amp.grad_scaler` | "GradScaler is enabled, but CUDA is not available. Disabling." | nerfstudio enables its scaler from the config's `mixed_precision` (on in `neus-fast`) before it turns mixed precision off on a CPU; the scaler then disables itself |
| `torch.utils.data.dataloader` | "This DataLoader will create N worker processes" | nerfstudio caches the images with 4 workers per process, which only load them once |
| `torch.jit._script` | `torch.jit.script` deprecated | nerfstudio's camera utilities at import |

`ns-train` imports nerfstudio's camera utilities before it loads any plugin, so under `ns-train` the
`torch.jit.script` notice still appears once, at the very start; `neurecon` shows none of them.
The plugin's own source of noise, tensors that require grad handed to nerfstudio's writer, is fixed where
it arises (`engine/trainer.py` passes detached values).
"""

from __future__ import annotations

import warnings

UPSTREAM_WARNINGS = (
    (UserWarning, r"Using a non-tuple sequence for multidimensional indexing is deprecated", r"nerfstudio\.cameras\.cameras"),
    (FutureWarning, r"`torch\.cuda\.amp\.custom_(fwd|bwd)\(args\.\.\.\)` is deprecated", r"nerfstudio\.field_components\.activations"),
    (FutureWarning, r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", r"nerfstudio\.engine\.trainer"),
    (UserWarning, r"torch\.cuda\.amp\.GradScaler is enabled, but CUDA is not available", r"torch\.(cuda\.)?amp\.grad_scaler"),
    (UserWarning, r"This DataLoader will create \d+ worker processes in total", r"torch\.utils\.data\.dataloader"),
    (FutureWarning, r"`torch\.jit\.script` is deprecated", r"torch\.jit\._script"),
)
"""(category, message regex, module regex) of each warning filtered."""


def install_warning_filters() -> None:
    """Ignore exactly the warnings listed in `UPSTREAM_WARNINGS` (idempotent)."""
    for category, message, module in UPSTREAM_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
