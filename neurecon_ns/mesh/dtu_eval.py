"""The DTU MVS benchmark's surface evaluation (Aanaes et al. 2016), step by step as its reference code runs it.

Files of the official evaluation release, under one folder:

```
Points/stl/stl{scan:03}_total.ply   structured-light reference points (millimetres)
ObsMask/ObsMask{scan}_10.mat        ObsMask: boolean voxel grid of the observed region; BB: its box (2x3, min row
                                    then max row); Res: its voxel size (mm)
ObsMask/Plane{scan}.mat             P: the table plane, a point x is above it when [x, 1] . P > 0
```

The protocol (all lengths in millimetres, the mesh in DTU's world frame):

1. The mesh is sampled on a grid of about `density` (0.2) in every triangle, vertices included
   (`evaluate.sample_triangle_grids`), then thinned so that no two points are within `density`
   (`evaluate.radius_downsample`).
2. "In box": points with `BB_min - patch <= x < BB_max + 2 patch` on every axis (`patch` = 60; the upper margin
   is twice the lower one in the reference code).
3. "Observed": in-box points whose voxel `round((x - BB_min) / Res)` lies in the grid and is set in ObsMask.
4. The reference points above the table plane are kept.
5. accuracy = mean distance from the observed points to the reference points; completeness = mean distance from
   the kept reference points to the in-box points; distances at or beyond `max_dist` (20) are dropped from each
   mean; Chamfer = (accuracy + completeness) / 2.

Optionally the mesh is first culled by the views' masks (`cull_by_scene_masks`): a vertex goes when a view sees it
outside its mask dilated by 24 pixels at 1600x1200 (UNISURF's and later papers' rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import trimesh
from jaxtyping import Bool, Float
from PIL import Image

from neurecon_ns.errors import UserInputError
from neurecon_ns.mesh.evaluate import (
    GeometryReport,
    Surface,
    load_surface,
    nearest_distances,
    radius_downsample,
    report_from_distances,
    sample_triangle_grids,
)
from neurecon_ns.mesh.postprocess import cull_by_cameras

DENSITY_MM = 0.2
PATCH_MM = 60.0
MAX_DIST_MM = 20.0
MASK_DILATION_PX_AT_1600 = 24.0
"""Mask dilation of the culling rule, in pixels of the full-resolution (1600x1200) DTU images."""
DTU_THRESHOLDS_MM = (0.5, 1.0, 2.0)


@dataclass
class DTUReference:
    """One scan's evaluation files, read and checked."""

    scan: int
    points: Float[np.ndarray, "num_points 3"]
    """Reference points (stl{scan:03}_total.ply)."""
    obs_mask: Bool[np.ndarray, "nx ny nz"]
    """Observed voxels."""
    bbox: Float[np.ndarray, "2 3"]
    """Box of the voxel grid: minimum corner, then maximum corner."""
    voxel_size: float
    """Edge of a voxel of ObsMask (Res)."""
    plane: Float[np.ndarray, "4"]
    """Table plane P."""


def dtu_reference_paths(dtu_dir: Path, scan: int) -> Dict[str, Path]:
    dtu_dir = Path(dtu_dir)
    return {
        "points": dtu_dir / "Points" / "stl" / f"stl{scan:03}_total.ply",
        "obs_mask": dtu_dir / "ObsMask" / f"ObsMask{scan}_10.mat",
        "plane": dtu_dir / "ObsMask" / f"Plane{scan}.mat",
    }


def _load_mat(path: Path, keys: Sequence[str]) -> Dict[str, np.ndarray]:
    from scipy.io import loadmat

    if not path.is_file():
        raise UserInputError(f"{path}: DTU evaluation file not found; --dtu-dir must hold Points/stl and ObsMask of the official release.")
    try:
        content = loadmat(str(path))
    except Exception as error:
        raise UserInputError(f"{path}: not a readable MATLAB file ({type(error).__name__}); download it again.") from None
    missing = [key for key in keys if key not in content]
    if missing:
        found = ", ".join(sorted(k for k in content if not k.startswith("__"))) or "nothing"
        raise UserInputError(f"{path}: holds no '{missing[0]}' (it has {found}); this is not the DTU file it is named after.")
    return {key: np.asarray(content[key]) for key in keys}


def load_dtu_reference(dtu_dir: Union[str, Path], scan: int) -> DTUReference:
    """Read and check the three files of `scan` under `dtu_dir`."""
    paths = dtu_reference_paths(Path(dtu_dir), scan)
    observed = _load_mat(paths["obs_mask"], ("ObsMask", "BB", "Res"))
    obs_mask, bbox, voxel = observed["ObsMask"], observed["BB"].astype(np.float64), observed["Res"].astype(np.float64)
    if obs_mask.ndim != 3:
        raise UserInputError(f"{paths['obs_mask']}: ObsMask has shape {obs_mask.shape}, not a 3-D voxel grid; this is not a DTU ObsMask file.")
    if bbox.shape != (2, 3) or not np.all(bbox[1] > bbox[0]):
        raise UserInputError(f"{paths['obs_mask']}: BB must be 2x3 (minimum row, maximum row), got {bbox.tolist()}; this is not a DTU ObsMask file.")
    if voxel.size != 1 or not float(voxel.reshape(-1)[0]) > 0:
        raise UserInputError(f"{paths['obs_mask']}: Res must be one positive voxel size, got {voxel.reshape(-1).tolist()}; this is not a DTU ObsMask file.")
    plane = _load_mat(paths["plane"], ("P",))["P"].astype(np.float64).reshape(-1)
    if plane.shape != (4,) or not np.isfinite(plane).all():
        raise UserInputError(f"{paths['plane']}: P must hold the 4 coefficients of a plane, got {plane.tolist()}; this is not a DTU Plane file.")
    reference = load_surface(paths["points"], role="reference point cloud")
    return DTUReference(
        scan=scan,
        points=reference.vertices,
        obs_mask=obs_mask.astype(bool),
        bbox=bbox,
        voxel_size=float(voxel.reshape(-1)[0]),
        plane=plane,
    )


def in_padded_box(points: Float[np.ndarray, "num 3"], bbox: Float[np.ndarray, "2 3"], patch: float) -> Bool[np.ndarray, " num"]:
    """Step 2: `BB_min - patch <= x < BB_max + 2 patch` on every axis."""
    return np.all((points >= bbox[0] - patch) & (points < bbox[1] + 2 * patch), axis=1)


def in_observed_voxels(points: Float[np.ndarray, "num 3"], reference: DTUReference) -> Bool[np.ndarray, " num"]:
    """Step 3: the point's voxel `round((x - BB_min) / Res)` is inside the grid and set in ObsMask."""
    voxel = np.round((points - reference.bbox[0]) / reference.voxel_size).astype(np.int64)
    inside = np.all((voxel >= 0) & (voxel < np.asarray(reference.obs_mask.shape)), axis=1)
    observed = np.zeros(len(points), dtype=bool)
    observed[inside] = reference.obs_mask[voxel[inside, 0], voxel[inside, 1], voxel[inside, 2]]
    return observed


def above_plane(points: Float[np.ndarray, "num 3"], plane: Float[np.ndarray, "4"]) -> Bool[np.ndarray, " num"]:
    """Step 4: `[x, 1] . P > 0`."""
    return points @ plane[:3] + plane[3] > 0


def evaluate_dtu(
    predicted: Union[Surface, trimesh.Trimesh],
    reference: DTUReference,
    density: float = DENSITY_MM,
    patch: float = PATCH_MM,
    max_dist: float = MAX_DIST_MM,
    thresholds: Sequence[float] = DTU_THRESHOLDS_MM,
    seed: Optional[int] = 0,
) -> GeometryReport:
    """Accuracy, completeness and Chamfer of a mesh (or point cloud) by the DTU protocol (module docstring).

    F-scores extend the protocol: precision over the observed points, recall over the reference points above
    the plane. `report.counts` records the points left after each step.
    """
    if isinstance(predicted, trimesh.Trimesh):
        predicted = Surface(Path("mesh"), np.asarray(predicted.vertices, dtype=np.float64), np.asarray(predicted.faces))
    sampled = predicted.vertices if predicted.faces is None else sample_triangle_grids(predicted.vertices, predicted.faces, density)
    thinned = radius_downsample(sampled, density, seed)
    in_box = thinned[in_padded_box(thinned, reference.bbox, patch)]
    observed = in_box[in_observed_voxels(in_box, reference)]
    if len(observed) == 0:
        raise UserInputError(
            f"{predicted.path}: none of its {len(thinned)} sampled points lies in the observed region of ObsMask{reference.scan}_10.mat; "
            f"the mesh is not in DTU's millimetre frame (write it with `neurecon mesh --space data`) or it is not scan {reference.scan}."
        )
    reference_above = reference.points[above_plane(reference.points, reference.plane)]
    if len(reference_above) == 0:
        raise UserInputError(
            f"Plane{reference.scan}.mat leaves none of the {len(reference.points)} points of stl{reference.scan:03}_total.ply above the table; "
            "the plane and point files are of different scans."
        )
    to_reference, _ = nearest_distances(observed, reference.points)
    to_predicted, _ = nearest_distances(reference_above, in_box)
    report = report_from_distances(to_reference, to_predicted, thresholds, max_dist)
    report.counts = {
        "mesh_samples": len(sampled),
        "after_downsampling": len(thinned),
        "in_padded_box": len(in_box),
        "observed": len(observed),
        "reference_points": len(reference.points),
        "reference_above_plane": len(reference_above),
    }
    return report


def read_scene_cameras(scene_dir: Path) -> Tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Intrinsics, OpenCV camera-to-world (in the frame of `world_mat`: DTU millimetres), `(width, height)` and
    masks of the views of a scene in the IDR-NeuS layout (`cameras_sphere.npz` or `cameras.npz`, `mask/`)."""
    from neurecon_ns.data.neus_dataparser import decompose_projection, first_existing, list_images

    scene_dir = Path(scene_dir)
    cameras_path = next((scene_dir / name for name in ("cameras_sphere.npz", "cameras.npz") if (scene_dir / name).is_file()), None)
    if cameras_path is None:
        raise UserInputError(f"{scene_dir}: no cameras_sphere.npz or cameras.npz; --cull-scene must be the scan's folder in the IDR-NeuS layout.")
    mask_dir = first_existing(scene_dir, ("mask", "masks"))
    if mask_dir is None or not list_images(mask_dir):
        raise UserInputError(f"{scene_dir}: no mask/ folder with images; culling by masks needs the scan's masks.")
    mask_paths = list_images(mask_dir)
    cameras = np.load(cameras_path)
    intrinsics, c2w, sizes, masks = [], [], [], []
    for view, mask_path in enumerate(mask_paths):
        key = f"world_mat_{view}"
        if key not in cameras:
            raise UserInputError(f"{cameras_path}: no '{key}' but {mask_dir} has {len(mask_paths)} masks; give one camera per mask.")
        K, pose = decompose_projection(np.asarray(cameras[key], dtype=np.float64)[:3, :4])
        with Image.open(mask_path) as image:
            mask = np.asarray(image.convert("L")) > 127
        intrinsics.append(K)
        c2w.append(pose)
        sizes.append((mask.shape[1], mask.shape[0]))
        masks.append(mask)
    return np.stack(intrinsics), np.stack(c2w), np.asarray(sizes), masks


def cull_by_scene_masks(
    mesh: trimesh.Trimesh, scene_dir: Union[str, Path], dilation_px: Optional[float] = None
) -> trimesh.Trimesh:
    """Drop the faces with a vertex that a view sees outside its dilated mask (vertices no view sees stay).

    The mesh is in the frame of the scene's `world_mat` (DTU millimetres). `dilation_px` defaults to 24 pixels
    at a width of 1600, scaled to the masks' width.
    """
    intrinsics, c2w, sizes, masks = read_scene_cameras(Path(scene_dir))
    if dilation_px is None:
        dilation_px = MASK_DILATION_PX_AT_1600 * float(sizes[0][0]) / 1600.0
    return cull_by_cameras(mesh, intrinsics, c2w, sizes, masks, dilation_px, min_views=0, pixel_centers_at_integers=True)
