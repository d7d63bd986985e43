"""Textured meshes: the mesh unwrapped into one UV atlas (xatlas), the radiance field's colour baked into a
texture, the gutters between charts filled, written as OBJ + MTL + PNG and as one GLB.

The colour of a texel is the radiance network's colour at the surface point the texel covers, averaged over
the training views that see the point (`model_mesh.select_views`, `model_mesh.view_averaged_colors`), or seen
head-on (view direction = minus the outward normal of the SDF), the same colour `--vertex-colors` gives a
vertex. A texture cannot change with the viewpoint: the average spreads a view-dependent highlight, at a
fraction of its strength, over the views that saw the point; head-on keeps the colour of one direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import torch
import trimesh
from jaxtyping import Bool, Float, Int, UInt8
from PIL import Image
from scipy import ndimage
from torch import Tensor

from neurecon_ns.errors import UserInputError
from neurecon_ns.render.rasterize import PinholeCamera, rasterize

TEXTURED_SUFFIXES = (".obj", ".glb")


@dataclass
class UVAtlas:
    """A mesh cut into charts and laid out in the unit square; seams duplicate the vertices on them."""

    source_vertex: Int[np.ndarray, " num_atlas_vertices"]
    """For each atlas vertex, the mesh vertex it copies."""
    faces: Int[np.ndarray, "num_faces 3"]
    """The mesh's faces, in the same order, indexing atlas vertices."""
    uv: Float[np.ndarray, "num_atlas_vertices 2"]
    """Texture coordinates in [0, 1]^2, v pointing up (OBJ's convention: v = 0 is the image's bottom row)."""
    texture_size: int
    """Side of the square texture the charts were packed for, in texels."""


def default_padding(texture_size: int) -> int:
    """Texels kept free between charts: 8 at 2048, 4 at 1024 (at least 2). The filled gutter splits the gap
    between two charts halfway, so mip levels whose texels span up to half the padding (level 2 at 2048) mix
    a chart's border only with its own colour."""
    return max(2, texture_size // 256)


def unwrap(mesh: trimesh.Trimesh, texture_size: int, padding_px: Optional[int] = None) -> UVAtlas:
    """Charts of `mesh` packed without overlap into one square atlas of `texture_size` texels (xatlas).

    xatlas picks the texel density that fills one atlas of that size; when the charts overflow it into
    several atlases, the density is lowered until they fit in one.
    """
    import xatlas

    padding = default_padding(texture_size) if padding_px is None else padding_px
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.uint32))
    texels_per_unit = 0.0  # xatlas estimates it from the resolution
    for _ in range(8):
        pack = xatlas.PackOptions()
        pack.resolution = texture_size
        pack.padding = padding
        pack.bilinear = True
        pack.texels_per_unit = texels_per_unit
        atlas.generate(pack_options=pack)
        if atlas.atlas_count == 1:
            break
        texels_per_unit = 0.8 * atlas.texels_per_unit
    source_vertex, faces, uv = atlas.get_mesh(0)
    return UVAtlas(
        source_vertex=source_vertex.astype(np.int64),
        faces=faces.astype(np.int64),
        uv=uv.astype(np.float64),
        texture_size=texture_size,
    )


@dataclass
class TexelFragments:
    """Which face covers each texel centre of the atlas, and where on it."""

    face_index: Int[Tensor, "size size"]
    """Face whose chart holds the texel centre, -1 in the gutters."""
    barycentric: Float[Tensor, "size size 3"]
    """Barycentric coordinates of the texel centre in that face's UV triangle."""

    @property
    def covered(self) -> Bool[Tensor, "size size"]:
        return self.face_index >= 0


def rasterize_atlas(atlas: UVAtlas) -> TexelFragments:
    """The UV triangles rasterised at the texel centres, image row `i` holding `v = 1 - (i + 1/2) / size`.

    `render.rasterize` does the work: every UV vertex placed at depth 1 in front of a camera at the origin with
    unit focal length, so its pixel is its texel `(u size, (1 - v) size)` and the barycentric coordinates are
    the affine ones of the UV triangle. A face that holds no texel centre is given the texel under its UV
    centroid when no other face holds that one, so that every chart, however small, has a colour of its own.
    """
    size = atlas.texture_size
    camera = PinholeCamera(camera_to_world=np.eye(4), fx=1.0, fy=1.0, cx=0.0, cy=0.0, width=size, height=size)
    uv_points = np.stack(
        [atlas.uv[:, 0] * size, -(1.0 - atlas.uv[:, 1]) * size, -np.ones(len(atlas.uv))], axis=-1
    )
    fragments = rasterize(torch.from_numpy(uv_points), torch.from_numpy(atlas.faces), camera)
    face_index, barycentric = fragments.face_index, fragments.barycentric
    # a face smaller than a texel may hold no texel centre: it takes the texel under its centroid, if free
    centroid_texel = np.floor(uv_points[atlas.faces].mean(axis=1)[:, :2] * [1.0, -1.0]).astype(np.int64)
    rows = torch.from_numpy(centroid_texel[:, 1].clip(0, size - 1))
    columns = torch.from_numpy(centroid_texel[:, 0].clip(0, size - 1))
    free = face_index[rows, columns] < 0
    face_index[rows[free], columns[free]] = torch.nonzero(free)[:, 0]
    barycentric[rows[free], columns[free]] = 1.0 / 3.0
    return TexelFragments(face_index=face_index, barycentric=barycentric)


def texel_points(
    vertices: Float[np.ndarray, "num_vertices 3"], atlas: UVAtlas, fragments: TexelFragments
) -> Float[np.ndarray, "num_covered 3"]:
    """The surface point under each covered texel (row-major order of the covered texels)."""
    covered = fragments.covered
    faces = torch.from_numpy(atlas.source_vertex[atlas.faces])
    corners = torch.from_numpy(np.asarray(vertices, dtype=np.float64))[faces[fragments.face_index[covered]]]
    return (fragments.barycentric[covered][..., None] * corners).sum(dim=-2).numpy()


def fill_gutters(
    texture: UInt8[np.ndarray, "size size 3"], covered: Bool[np.ndarray, "size size"]
) -> UInt8[np.ndarray, "size size 3"]:
    """Every texel outside the charts takes the colour of the nearest covered texel (Euclidean).

    Bilinear filtering and mip-mapping average neighbouring texels; with the gutters holding the charts' own
    border colours, a chart's edge mixes with the same colour instead of black, so no seam shows until a mip
    level's texel reaches across the gutter's half to the next chart.
    """
    if covered.all() or not covered.any():
        return texture.copy()
    nearest = ndimage.distance_transform_edt(~covered, return_distances=False, return_indices=True)
    return texture[nearest[0], nearest[1]]


def textured_mesh(
    mesh: trimesh.Trimesh, atlas: UVAtlas, texture: UInt8[np.ndarray, "size size 3"], name: str = "texture"
) -> trimesh.Trimesh:
    """The atlas' mesh (seam vertices duplicated) with `texture` as its colour; white diffuse factor, so viewers
    that multiply the texture by the material colour show the texture unchanged."""
    material = trimesh.visual.material.SimpleMaterial(
        image=Image.fromarray(texture), diffuse=(255, 255, 255, 255), ambient=(255, 255, 255, 255),
        specular=(0, 0, 0, 255), glossiness=1.0, name=name,
    )
    vertices = np.asarray(mesh.vertices)[atlas.source_vertex]
    visual = trimesh.visual.TextureVisuals(uv=atlas.uv, material=material)
    result = trimesh.Trimesh(vertices, atlas.faces, visual=visual, process=False)
    result.metadata.update(mesh.metadata)
    return result


def check_textured_path(path: Union[str, Path]) -> Path:
    """The output path of a textured mesh: `.obj` or `.glb` (both are written)."""
    path = Path(path)
    if path.suffix.lower() not in TEXTURED_SUFFIXES:
        raise UserInputError(
            f"{path}: --texture writes OBJ (+ MTL + PNG) and GLB, not '{path.suffix}'; end the output path with .obj or .glb."
        )
    return path


def export_textured_mesh(mesh: trimesh.Trimesh, path: Union[str, Path]) -> List[Path]:
    """`<stem>.obj`, `<stem>.mtl`, `<stem>.png` and `<stem>.glb` (texture embedded) beside `path`."""
    path = check_textured_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.with_suffix("")
    material = mesh.visual.material
    material.name = stem.name
    text, files = trimesh.exchange.obj.export_obj(
        mesh, include_normals=False, return_texture=True, mtl_name=f"{stem.name}.mtl"
    )
    written = [stem.with_suffix(".obj")]
    written[0].write_text(text)
    for name, data in files.items():
        (path.parent / name).write_bytes(data)
        written.append(path.parent / name)
    glb = mesh.copy()
    glb.visual.material = trimesh.visual.material.PBRMaterial(
        name=stem.name, baseColorTexture=material.image, metallicFactor=0.0, roughnessFactor=1.0, doubleSided=True
    )
    written.append(stem.with_suffix(".glb"))
    glb.export(written[-1])
    return written


def sample_texture(
    texture: Float[Tensor, "size_v size_u 3"], uv: Float[Tensor, "*bs 2"]
) -> Float[Tensor, "*bs 3"]:
    """Bilinear lookup of `texture` (row 0 at v = 1) at `uv`, texel centres at `(k + 1/2) / size`, clamped at
    the border: what a renderer shows at magnification."""
    height, width = texture.shape[:2]
    x = (uv[..., 0] * width - 0.5).clamp(0, width - 1)
    y = ((1.0 - uv[..., 1]) * height - 0.5).clamp(0, height - 1)
    x0, y0 = x.floor().long(), y.floor().long()
    x1, y1 = (x0 + 1).clamp(max=width - 1), (y0 + 1).clamp(max=height - 1)
    wx, wy = (x - x0)[..., None], (y - y0)[..., None]
    top = texture[y0, x0] * (1 - wx) + texture[y0, x1] * wx
    bottom = texture[y1, x0] * (1 - wx) + texture[y1, x1] * wx
    return top * (1 - wy) + bottom * wy
