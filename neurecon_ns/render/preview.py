"""A picture of a camera path among the training cameras, to check a path (and pick view ids) before rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from jaxtyping import Float


def _frustum_lines(c2w: Float[np.ndarray, "4 4"], size: float, aspect: float) -> Float[np.ndarray, "16 3"]:
    """Segments (pairs of points) of a small pyramid: apex at the camera centre, base on its image plane (-z)."""
    corners_camera = np.array([[-aspect, -1.0, -2.0], [aspect, -1.0, -2.0], [aspect, 1.0, -2.0], [-aspect, 1.0, -2.0]])
    corners = c2w[:3, 3] + 0.5 * size * corners_camera @ c2w[:3, :3].T
    apex = c2w[:3, 3]
    segments = []
    for k in range(4):
        segments += [apex, corners[k], corners[k], corners[(k + 1) % 4]]
    return np.array(segments)


def plot_camera_path(
    output_path: Path,
    train_c2w: Float[np.ndarray, "num_views 4 4"],
    path_c2w: Float[np.ndarray, "num_frames 4 4"],
    views: Sequence[int] = (),
    target: Optional[Sequence[float]] = None,
    up: Optional[Float[np.ndarray, "3"]] = None,
    aspect: float = 4.0 / 3.0,
    title: str = "",
) -> Path:
    """PNG with two panels: a 3D view and a view from above (along `up`), training cameras in grey with their ids,
    the named `views` in red, the path in blue with a frustum every few frames, the first frame in green."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_c2w = np.asarray(train_c2w, dtype=np.float64)
    path_c2w = np.asarray(path_c2w, dtype=np.float64)
    target_point = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    centers = train_c2w[:, :3, 3]
    size = 0.08 * float(np.linalg.norm(centers - target_point, axis=1).mean())

    # "from above": coordinates in a frame whose third axis is the scene's up
    up_axis = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    helper = np.array([1.0, 0.0, 0.0]) if abs(up_axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    axis_x = np.cross(helper, up_axis)
    axis_x /= np.linalg.norm(axis_x)
    axis_y = np.cross(up_axis, axis_x)
    to_plan = np.stack([axis_x, axis_y, up_axis], axis=1)

    figure = plt.figure(figsize=(12, 6))
    axes_3d = figure.add_subplot(1, 2, 1, projection="3d")
    axes_top = figure.add_subplot(1, 2, 2)
    step = max(len(path_c2w) // 12, 1)
    drawn = [
        (train_c2w, "0.55", 0.8),
        (train_c2w[list(views)], "red", 1.6),
        (path_c2w[::step], "tab:blue", 0.8),
        (path_c2w[:1], "green", 1.6),
    ]
    for poses, color, width in drawn:
        for pose in poses:
            segments = (_frustum_lines(pose, size, aspect) - target_point) @ to_plan
            for start, end in zip(segments[0::2], segments[1::2]):
                line = np.stack([start, end])
                axes_3d.plot(line[:, 0], line[:, 1], line[:, 2], color=color, linewidth=width)
                axes_top.plot(line[:, 0], line[:, 1], color=color, linewidth=width)
    path_plan = (path_c2w[:, :3, 3] - target_point) @ to_plan
    axes_3d.plot(path_plan[:, 0], path_plan[:, 1], path_plan[:, 2], color="tab:blue", linewidth=1.5)
    axes_top.plot(path_plan[:, 0], path_plan[:, 1], color="tab:blue", linewidth=1.5)
    centers_plan = (centers - target_point) @ to_plan
    for index, center in enumerate(centers_plan):
        color = "red" if index in views else "0.3"
        axes_3d.text(center[0], center[1], center[2], str(index), color=color, fontsize=7)
        axes_top.annotate(str(index), center[:2], color=color, fontsize=7, xytext=(2, 2), textcoords="offset points")
    axes_3d.scatter([0.0], [0.0], [0.0], color="black", marker="x")
    axes_top.scatter([0.0], [0.0], color="black", marker="x")

    extent = np.abs(np.concatenate([centers_plan, path_plan])).max() * 1.1
    axes_3d.set_xlim(-extent, extent)
    axes_3d.set_ylim(-extent, extent)
    axes_3d.set_zlim(-extent, extent)
    axes_3d.set_box_aspect((1, 1, 1))
    axes_3d.set_title("3D (target at x, up is +z)")
    axes_top.set_aspect("equal")
    axes_top.set_title("from above (counter-clockwise is a -> b -> c)")
    axes_top.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output_path, dpi=110)
    plt.close(figure)
    return output_path
