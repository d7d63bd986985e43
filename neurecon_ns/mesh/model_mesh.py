"""The surface of a trained model: its level set extracted in the training space, mapped to the data's units."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import trimesh

from neurecon_ns.mesh.extract import extract_level_set, transform_mesh


def extract_model_surface(
    model,
    resolution: int = 256,
    bbox_radius: Optional[float] = None,
    unit_to_data: Optional[np.ndarray] = None,
    chunk_size: int = 2**16,
    progress: bool = False,
) -> trimesh.Trimesh:
    """Zero level set of `model.level_set` (negative inside) in the cube `[-r, r]^3` of the training space.

    `r` defaults to the model's `sphere_radius` plus one voxel, so a surface touching the sphere is closed.
    With `unit_to_data` (a 4x4 map, e.g. `LoadedRun.unit_to_data`) the mesh is returned in the data's units.
    """
    radius = model.config.sphere_radius if bbox_radius is None else bbox_radius
    radius = radius * (1.0 + 2.0 / resolution)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            mesh = extract_level_set(
                model.level_set,
                [-radius] * 3,
                [radius] * 3,
                resolution,
                device=device,
                chunk_size=chunk_size,
                progress=progress,
            )
    finally:
        model.train(was_training)
    if unit_to_data is not None:
        mesh = transform_mesh(mesh, unit_to_data)
    return mesh
