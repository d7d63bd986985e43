"""A button in nerfstudio's viewer that extracts a coarse mesh of the surface and shows it in the 3D scene.

nerfstudio's viewer turns every `ViewerElement` attribute of the model into a control. A model that holds a
`MeshPreviewButton` gets a "Preview mesh" button (every surface model of the plugin holds one); a click runs
marching cubes at a low resolution and adds the mesh to the viewer's scene, in place, beside the training
cameras (the viewer draws the training space scaled by `VISER_NERFSTUDIO_SCALE_RATIO`).

nerfstudio runs a control's callback holding the trainer's lock, so training waits until it returns: the click
only starts a thread that extracts and shows the mesh, and returns at once.
"""

from __future__ import annotations

import threading
import weakref
from typing import Optional

import numpy as np
import torch
import trimesh
from nerfstudio.viewer.viewer_elements import ViewerButton
from rich.console import Console

from neurecon_ns.errors import UserInputError
from neurecon_ns.mesh.extract import extract_level_set

MESH_NODE = "/neurecon/mesh_preview"
"""Name of the preview mesh in the viewer's scene tree (a new click replaces it)."""

CONSOLE = Console()


def preview_mesh(model, resolution: int) -> trimesh.Trimesh:
    """Zero level set of `model.level_set` in the cube around its sphere, in the training space.

    Unlike `extract_model_surface` the model's train/eval mode is left alone: the click arrives while the
    trainer's thread may be in the middle of a step, which reads that mode.
    """
    radius = model.config.sphere_radius * (1.0 + 2.0 / resolution)
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    with torch.no_grad():
        return extract_level_set(model.level_set, [-radius] * 3, [radius] * 3, resolution, device=device, progress=False)


def show_mesh(viser_server, mesh: trimesh.Trimesh, scale: float) -> None:
    """Add the training-space `mesh` to the viewer's scene (scaled as the viewer scales the training space)."""
    viser_server.scene.add_mesh_simple(
        MESH_NODE,
        vertices=np.asarray(mesh.vertices, dtype=np.float32) * scale,
        faces=np.asarray(mesh.faces, dtype=np.uint32),
        color=(200, 200, 200),
        side="double",
    )


class MeshPreviewButton(ViewerButton):
    """"Preview mesh": extract the surface at `resolution` and show it in the viewer."""

    def __init__(self, model, resolution: int = 64, name: str = "Preview mesh") -> None:
        # a weak reference: the model holds the button, the button must not keep the model alive
        self._model = weakref.ref(model)
        self.resolution = resolution
        self.viser_server = None
        self._worker: Optional[threading.Thread] = None
        super().__init__(name, cb_hook=self._on_click)

    def install(self, viser_server) -> None:
        self.viser_server = viser_server
        super().install(viser_server)

    def _on_click(self, _: ViewerButton) -> None:
        if self._worker is not None and self._worker.is_alive():
            return  # the previous click's mesh is still being extracted
        self._worker = threading.Thread(target=self.show_preview, name="mesh-preview", daemon=True)
        self._worker.start()

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait until the last click's preview is shown (tests)."""
        if self._worker is not None:
            self._worker.join(timeout)

    def show_preview(self) -> Optional[trimesh.Trimesh]:
        """Extract the surface now and show it; the mesh, or None when the model has no surface yet."""
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

        model = self._model()
        if model is None or self.viser_server is None:
            return None
        try:
            mesh = preview_mesh(model, self.resolution)
        except UserInputError as error:  # no surface yet: say so in the terminal, keep training
            CONSOLE.print(f"[yellow]Preview mesh: {error}")
            return None
        show_mesh(self.viser_server, mesh, VISER_NERFSTUDIO_SCALE_RATIO)
        CONSOLE.print(f"Preview mesh: {len(mesh.faces)} faces at resolution {self.resolution}, shown as {MESH_NODE}")
        return mesh
