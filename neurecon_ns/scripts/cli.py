"""`neurecon`: the plugin's own tools, for what nerfstudio's `ns-*` commands have no slot for.

Each subcommand is a dataclass with a `main()` method, defined in its own module beside this one.
"""

from __future__ import annotations

import importlib
import sys
from typing import Dict, Tuple

import tyro

# subcommand name -> (module, dataclass); modules are imported only when the CLI is built.
SUBCOMMANDS: Dict[str, Tuple[str, str]] = {
    "camera-path": ("camera_path", "CameraPath"),
    "demo": ("demo", "Demo"),
    "eval-mesh": ("eval_mesh", "EvalMesh"),
    "mesh": ("mesh", "Mesh"),
    "synth": ("synth", "Synth"),
    "video": ("video", "Video"),
}


def _load(name: str):
    module_name, class_name = SUBCOMMANDS[name]
    return getattr(importlib.import_module(f"neurecon_ns.scripts.{module_name}"), class_name)


def entrypoint() -> None:
    """Console entry point of `neurecon`."""
    commands = {name: _load(name) for name in SUBCOMMANDS}
    command = tyro.extras.subcommand_cli_from_dict(commands, description=__doc__)
    try:
        command.main()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    entrypoint()
