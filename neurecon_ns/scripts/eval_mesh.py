"""`neurecon eval-mesh`: how close a mesh is to a reference surface, generically or by the DTU protocol."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from rich.console import Console
from rich.table import Table

from neurecon_ns.errors import UserInputError
from neurecon_ns.mesh.evaluate import GeometryReport, compare_surfaces, default_thresholds, load_surface


@dataclass
class EvalMesh:
    """Accuracy, completeness, Chamfer, F-score and normal consistency of a mesh against a reference.

    Generic mode (--gt): both surfaces are sampled and compared in their own units. DTU mode (--dtu-dir and
    --scan): the official protocol on the official evaluation files, the mesh in DTU millimetres.
    """

    mesh: Path
    """The mesh to evaluate (.ply, .obj, .glb, ...)."""
    gt: Optional[Path] = None
    """Reference mesh or point cloud (generic mode)."""
    dtu_dir: Optional[Path] = None
    """DTU mode: folder of the official evaluation files (Points/stl/stl{scan:03}_total.ply, ObsMask/)."""
    scan: Optional[int] = None
    """DTU mode: scan number (e.g. 65)."""
    output_path: Optional[Path] = None
    """JSON file for the numbers (default: beside the mesh, <mesh>_eval.json)."""
    thresholds: Tuple[float, ...] = ()
    """F-score thresholds in the meshes' units (default: 0.5, 1 and 2 mm in DTU mode; 0.5%, 1% and 2% of the reference's bounding-box diagonal otherwise)."""
    num_points: int = 200_000
    """Generic mode: points sampled uniformly by area on each mesh."""
    sampling_distance: Optional[float] = None
    """Sample on triangle grids at this spacing and thin to it instead of --num-points (DTU: 0.2 mm)."""
    to_surface: bool = False
    """Generic mode, two meshes: measure each mesh's sampled points to the other mesh's triangles rather than to its
    sampled points, which adds about half their spacing to every distance."""
    max_distance: Optional[float] = None
    """Outlier cut-off: distances at or beyond it are left out of accuracy and completeness (DTU: 20 mm)."""
    patch_size: float = 60.0
    """DTU mode: margin (mm) around ObsMask's box inside which the mesh is kept."""
    cull_scene: Optional[Path] = None
    """DTU mode: the scan's folder in the IDR-NeuS layout (cameras_sphere.npz, mask/); cull the mesh by its views' dilated masks first."""
    cull_dilation_px: Optional[float] = None
    """Mask dilation of --cull-scene in pixels (default: 24 at 1600 pixels wide, scaled to the masks)."""
    seed: int = 0
    """Seed of the random sampling and downsampling order."""

    def main(self) -> None:
        dtu_mode = self.dtu_dir is not None or self.scan is not None
        if dtu_mode == (self.gt is not None):
            raise UserInputError("give either --gt REFERENCE (generic mode) or --dtu-dir DIR --scan N (DTU mode).")
        if dtu_mode and (self.dtu_dir is None or self.scan is None):
            raise UserInputError("DTU mode needs both --dtu-dir and --scan.")
        if self.cull_scene is not None and not dtu_mode:
            raise UserInputError("--cull-scene belongs to DTU mode (the mesh must be in the scan's millimetres); add --dtu-dir and --scan.")
        if self.to_surface and dtu_mode:
            raise UserInputError("--to-surface belongs to generic mode (DTU's reference is a point cloud); drop it or use --gt.")
        if any(not tau > 0 for tau in self.thresholds):
            raise UserInputError(f"--thresholds {self.thresholds}: thresholds must be positive distances.")
        predicted = load_surface(self.mesh, role="mesh")
        if dtu_mode:
            report, description = self._dtu(predicted)
        else:
            assert self.gt is not None
            reference = load_surface(self.gt, role="reference")
            thresholds = self.thresholds or default_thresholds(reference)
            report = compare_surfaces(
                predicted, reference, self.num_points, self.sampling_distance, thresholds, self.max_distance, self.seed,
                to_surface=self.to_surface,
            )
            description = f"{self.mesh} against {self.gt}"
        output_path = self.output_path or self.mesh.with_name(f"{self.mesh.stem}_eval.json")
        output_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.write_text(json.dumps(_json_ready(report.as_dict()), indent=2) + "\n")
        Console().print(report_table(report, description))
        Console().print(f"Written to {output_path}")

    def _dtu(self, predicted) -> Tuple[GeometryReport, str]:
        from neurecon_ns.mesh import dtu_eval

        assert self.dtu_dir is not None and self.scan is not None
        reference = dtu_eval.load_dtu_reference(self.dtu_dir, self.scan)
        if self.cull_scene is not None:
            if predicted.faces is None:
                raise UserInputError(f"{self.mesh}: a point cloud cannot be culled by masks; pass a mesh or drop --cull-scene.")
            culled = dtu_eval.cull_by_scene_masks(predicted.mesh, self.cull_scene, self.cull_dilation_px)
            if len(culled.faces) == 0:
                raise UserInputError(f"{self.mesh}: culling by the masks of {self.cull_scene} removed every face; the mesh is not in that scan's frame.")
            predicted = type(predicted)(predicted.path, culled.vertices, culled.faces)
        report = dtu_eval.evaluate_dtu(
            predicted,
            reference,
            density=self.sampling_distance or dtu_eval.DENSITY_MM,
            patch=self.patch_size,
            max_dist=self.max_distance if self.max_distance is not None else dtu_eval.MAX_DIST_MM,
            thresholds=self.thresholds or dtu_eval.DTU_THRESHOLDS_MM,
            seed=self.seed,
        )
        return report, f"{self.mesh}, DTU scan {self.scan} (mm)"


def _json_ready(value):
    """NaN as null, float keys as strings: a report JSON any reader takes."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_table(report: GeometryReport, title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    cut = f" (distances < {report.max_distance:g})" if report.max_distance is not None else ""
    table.add_row(f"accuracy{cut}", f"{report.accuracy:.4f}")
    table.add_row(f"completeness{cut}", f"{report.completeness:.4f}")
    table.add_row("Chamfer", f"{report.chamfer:.4f}")
    for tau, fscore in report.fscore.items():
        table.add_row(f"F-score @ {tau:g}", f"{fscore:.4f}  (P {report.precision[tau]:.3f}, R {report.recall[tau]:.3f})")
    if report.normal_consistency is not None:
        table.add_row("normal consistency", f"{report.normal_consistency:.4f}")
    table.add_row("points (predicted / reference)", f"{report.num_predicted_points} / {report.num_reference_points}")
    for step, count in report.counts.items():
        table.add_row(f"  {step.replace('_', ' ')}", str(count))
    return table
