"""`neurecon mesh`: the surface of a trained run as a triangle mesh, on CPU or GPU, at any resolution."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Literal, Optional, Tuple

import numpy as np
import trimesh
from rich.console import Console

from neurecon_ns.errors import UserInputError
from neurecon_ns.mesh.cleanup import StepReport, fill_holes, remove_small_components, simplify
from neurecon_ns.mesh.extract import extraction_stats
from neurecon_ns.mesh.model_mesh import (
    bake_texture,
    cull_to_training_views,
    extract_model_surface,
    training_views,
    vertex_colors,
)
from neurecon_ns.mesh.postprocess import check_mesh_path, export_mesh, keep_largest_component, transform_mesh
from neurecon_ns.mesh.texture import check_textured_path, export_textured_mesh


@dataclass
class Mesh:
    """Extract the zero level set of a run's SDF (or UNISURF's occupancy = 0.5) by coarse-to-fine marching cubes."""

    load_config: Path
    """The run's config.yml, as ns-train wrote it."""
    output_path: Path = Path("mesh.ply")
    """Where to write the mesh: .ply, .obj or .glb."""
    resolution: int = 512
    """Marching-cubes samples per axis of the bounding box (any value >= 2)."""
    space: Literal["data", "unit"] = "data"
    """Coordinates of the written mesh: "data", the data's own units (DTU: millimetres, through the data parser's transform); "unit", the training space where the object lies in the unit sphere."""
    region: Literal["sphere", "scene-box"] = "sphere"
    """Bounding box when --bbox-min/--bbox-max are not given: the cube around the model's sphere, or the run's scene box."""
    bbox_min: Optional[Tuple[float, float, float]] = None
    """Lower corner of the bounding box, in the training space."""
    bbox_max: Optional[Tuple[float, float, float]] = None
    """Upper corner of the bounding box, in the training space."""
    vertex_colors: bool = False
    """Colour each vertex with the radiance network, seen along its normal."""
    cull_unseen: bool = False
    """Remove faces that no training camera sees and, where the data has masks, faces outside the mask of a view that sees them."""
    mask_dilation_px: float = 0.0
    """Grow the masks by this many pixels before --cull-unseen tests against them."""
    keep_largest_component: bool = False
    """Keep only the connected component with the most faces."""
    min_component_fraction: float = 0.0
    """Remove connected components with fewer faces than this fraction of the largest one (floaters); 0 keeps all."""
    fill_holes: int = 0
    """Close holes whose border has at most this many edges (a fan around the hole's centroid); 0 fills none."""
    target_faces: Optional[int] = None
    """Simplify to about this many faces by quadric decimation (after the cleanup, before colours and texture)."""
    texture: bool = False
    """Unwrap the mesh into a UV atlas and bake the surface's colour (--texture-color) into a texture: writes <stem>.obj, .mtl, .png and .glb."""
    texture_size: int = 2048
    """Side of the square texture, in texels."""
    texture_color: Literal["photos", "views", "normal"] = "photos"
    """Colour baked into the texture: "photos", the training photographs' colours where the surface point projects, averaged over the training views that see it (inside their masks, occlusion tested, away from its silhouettes in that view), weighted by the pixels the point covers in each: the single colour closest to the photographs; "views", the radiance field's colour averaged the same way (one network query per texel and view); "normal", the radiance field's colour seen head-on along the surface normal (also where no view sees a point)."""
    texture_views: Optional[int] = None
    """The most views averaged per texel, those in which the point covers the most pixels; default: every view that sees it with --texture-color photos, 4 with views."""
    level: float = 0.0
    """Level of the level-set function to extract (0 is the surface)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the field is evaluated: "auto" is the GPU when there is one."""
    chunk_size: int = 65536
    """Points per field evaluation (lower it if the GPU runs out of memory)."""
    dense: bool = False
    """Evaluate every sample of the grid (the slow reference; memory grows as resolution^3)."""
    coarse_factor: Optional[int] = None
    """Fine cells per coarse cell (default 4; 8 or more above resolution 1025)."""
    dilation: int = 1
    """Coarse cells searched around each coarse cell the surface crosses."""
    progress: bool = True
    """Show progress bars."""

    def main(self) -> None:
        console = Console()
        check_mesh_path(self.output_path)
        self.check_cleanup_options()
        if self.resolution < 2:
            raise UserInputError(f"--resolution {self.resolution}: give at least 2 samples per axis.")
        if (self.bbox_min is None) != (self.bbox_max is None):
            raise UserInputError("give both --bbox-min and --bbox-max, or neither.")
        from neurecon_ns.runs import load_run

        run = load_run(self.load_config, device=self.device)
        model = run.model
        outputs = run.pipeline.datamanager.train_dataparser_outputs
        if self.texture and self.texture_color == "photos":
            training_views(outputs).check_photographs()  # before minutes of extraction
        bbox_min, bbox_max = self.bbox_min, self.bbox_max
        if bbox_min is None and self.region == "scene-box":
            aabb = outputs.scene_box.aabb.detach().cpu().numpy().astype(np.float64)
            bbox_min, bbox_max = aabb[0], aabb[1]

        mesh = extract_model_surface(
            model,
            resolution=self.resolution,
            chunk_size=self.chunk_size,
            progress=self.progress,
            bbox_min=bbox_min,
            bbox_max=bbox_max,
            level=self.level,
            dense=self.dense,
            **({} if self.dense else {"coarse_factor": self.coarse_factor, "dilation": self.dilation}),
        )
        stats = extraction_stats(mesh)
        if self.cull_unseen:
            mesh = cull_to_training_views(mesh, training_views(outputs), mask_dilation_px=self.mask_dilation_px)
        if self.keep_largest_component:
            mesh = keep_largest_component(mesh)
        if len(mesh.faces) == 0:
            raise UserInputError(
                f"{self.load_config}: nothing of the surface is left after culling; run without --cull-unseen "
                "or grow the masks with --mask-dilation-px."
            )
        mesh, reports = self.clean_up(mesh)
        for report in reports:
            console.print(f"  {report.line()}")
        if self.texture:
            views = training_views(outputs) if self.texture_color in ("views", "photos") else None
            mesh = bake_texture(
                model, mesh, self.texture_size, self.chunk_size // 2, self.progress, views=views,
                max_views=self.max_texture_views(), from_photographs=self.texture_color == "photos",
            )
            if views is not None:
                source = "the photographs' colour" if self.texture_color == "photos" else "the radiance field's colour"
                most = "" if self.max_texture_views() is None else f"at most {self.max_texture_views()} of "
                console.print(
                    f"  texture: {source} averaged over {most}the training views that see each point ({len(views.intrinsics)} views); "
                    f"{100 * mesh.metadata['texels_seen_fraction']:.1f}% of the texels seen by a view, the rest head-on"
                )
        elif self.vertex_colors:
            mesh.visual.vertex_colors = vertex_colors(model, np.asarray(mesh.vertices), self.chunk_size // 2)
        if self.space == "data":
            mesh = transform_mesh(mesh, run.unit_to_data)
        paths = export_textured_mesh(mesh, self.output_path) if self.texture else [export_mesh(mesh, self.output_path)]

        console.print(
            f"{', '.join(str(path) for path in paths)}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, "
            f"{'data units' if self.space == 'data' else 'training space'}"
        )
        console.print(
            f"  {stats.num_queries:,} field queries ({stats.num_dense_queries / max(stats.num_queries, 1):.1f}x fewer "
            f"than dense {self.resolution}^3) in {stats.seconds:.1f} s on {run.config.machine.device_type}"
        )

    def max_texture_views(self) -> Optional[int]:
        """`--texture-views`, or its default for the colour: every view for the photographs, 4 network queries."""
        if self.texture_views is not None:
            return self.texture_views
        return None if self.texture_color == "photos" else 4

    def check_cleanup_options(self) -> None:
        """The simplification, cleanup and texture options, checked before the run is loaded."""
        if self.texture:
            check_textured_path(self.output_path)
            if self.texture_size < 64:
                raise UserInputError(f"--texture-size {self.texture_size}: give at least 64 texels per side.")
            if self.texture_views is not None and self.texture_views < 1:
                raise UserInputError(f"--texture-views {self.texture_views}: give at least 1 view per texel.")
        if self.target_faces is not None and self.target_faces < 4:
            raise UserInputError(f"--target-faces {self.target_faces}: give at least 4 faces.")
        if not 0.0 <= self.min_component_fraction <= 1.0:
            raise UserInputError(f"--min-component-fraction {self.min_component_fraction:g}: give a fraction between 0 and 1.")
        if self.fill_holes < 0:
            raise UserInputError(f"--fill-holes {self.fill_holes}: give the largest hole to close, in edges (0 for none).")

    def clean_up(self, mesh: trimesh.Trimesh) -> Tuple[trimesh.Trimesh, List[StepReport]]:
        """Small components removed, small holes closed, then the mesh simplified, as the options ask."""
        reports = []
        if self.min_component_fraction > 0:
            mesh, report = remove_small_components(mesh, self.min_component_fraction)
            reports.append(report)
        if self.fill_holes > 0:
            mesh, report = fill_holes(mesh, self.fill_holes)
            reports.append(report)
        if self.target_faces is not None:
            mesh, report = simplify(mesh, self.target_faces)
            reports.append(report)
        return mesh, reports
