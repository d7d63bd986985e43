"""Camera axes: the plugin works in nerfstudio's OpenGL convention; files of the NeuS/IDR, DTU and MVSNet
releases, and the synthetic scenes' renderer, use OpenCV's.

OpenCV: x right, y down, z forward (the camera looks along +z). OpenGL: x right, y up, z back (it looks along
-z). A camera-to-world matrix changes from one to the other by negating its y and z columns, which is its own
inverse: `flip_camera_axes` goes either way.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float


def flip_camera_axes(c2w: Float[np.ndarray, "*bs 4 4"]) -> Float[np.ndarray, "*bs 4 4"]:
    """Camera-to-world matrices from OpenCV's camera axes to OpenGL's, or back (a copy; `*bs 3 4` works too)."""
    c2w = np.array(c2w, copy=True)
    c2w[..., :3, 1:3] *= -1
    return c2w
