"""Textured meshes: the UV atlas, the bake of an analytic colour field, the filled gutters, the written files,
and `neurecon mesh --texture` on a trained run."""

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from neurecon_ns.data.conventions import flip_camera_axes
from neurecon_ns.errors import UserInputError
from neurecon_ns.mesh.extract import extract_level_set
from neurecon_ns.mesh.model_mesh import (
    TrainingViews,
    bake_texture,
    nearest_to_head_on,
    photograph_averaged_colors,
    select_views,
    surface_colors,
    view_averaged_colors,
)
from neurecon_ns.mesh.texture import (
    export_textured_mesh,
    fill_gutters,
    rasterize_atlas,
    sample_texture,
    texel_points,
    unwrap,
)
from neurecon_ns.render.rasterize import PinholeCamera, interpolate_vertex_attribute, rasterize


def torus_sdf(points: torch.Tensor) -> torch.Tensor:
    """A torus of radii 0.5 and 0.2 about the z axis: a shape with charts of both curvature signs and a hole."""
    ring = torch.sqrt(points[..., 0] ** 2 + points[..., 1] ** 2) - 0.5
    return torch.sqrt(ring**2 + points[..., 2] ** 2) - 0.2


@pytest.fixture(scope="module")
def torus():
    return extract_level_set(torus_sdf, [-0.8] * 3, [0.8] * 3, 40, progress=False)


@pytest.fixture(scope="module")
def coarse_torus():
    """Fewer faces, for the tests that bake more than once (the unwrap dominates their time)."""
    return extract_level_set(torus_sdf, [-0.8] * 3, [0.8] * 3, 24, progress=False)


def color_field(points: torch.Tensor) -> torch.Tensor:
    """A smooth colour that changes across the surface (so misplaced texels show)."""
    return 0.5 + 0.4 * torch.sin(3.0 * points)


class ColorFieldModel(torch.nn.Module):
    """Stands in for a surface model in `bake_texture`: the torus SDF and a colour that depends on the position
    alone (so the head-on direction has no effect on it)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.field = SimpleNamespace(get_level_value_and_gradient=self._level_and_gradient, get_colors=self._colors)

    def _level_and_gradient(self, points):
        points = points.detach().requires_grad_(True)
        with torch.enable_grad():
            sdf = torus_sdf(points)
            (gradient,) = torch.autograd.grad(sdf.sum(), points)
        return sdf[:, None], torch.zeros(len(points), 1), gradient

    def surface_normals(self, gradient):
        return torch.nn.functional.normalize(gradient, dim=-1)

    def _colors(self, points, view_directions, gradient, features):
        return color_field(points)


class DirectionColorModel(ColorFieldModel):
    """A colour that depends on the view direction alone, `(1 - d) / 2`: seen head-on (d = -n) it is `(1 + n) / 2`,
    the normal map, so a bake that looks along the wrong direction shows."""

    def _colors(self, points, view_directions, gradient, features):
        return (1.0 - view_directions) / 2.0


def test_bake_looks_head_on_and_surface_colours_take_the_given_directions(torus):
    textured = bake_texture(DirectionColorModel(), torus, texture_size=256)
    texture = torch.as_tensor(np.asarray(textured.visual.material.image.convert("RGB")), dtype=torch.float64) / 255.0
    uv = torch.as_tensor(textured.visual.uv, dtype=torch.float64)
    centers = torch.as_tensor(textured.triangles_center).requires_grad_(True)
    (gradient,) = torch.autograd.grad(torus_sdf(centers).sum(), centers)
    expected = (1.0 + torch.nn.functional.normalize(gradient, dim=-1)) / 2.0
    error = (sample_texture(texture, uv[torch.as_tensor(textured.faces)].mean(dim=1)) - expected).abs()
    assert error.mean() < 0.01
    # along given directions (a camera's rays) the colour is the one for those directions, not the head-on one
    points = np.asarray(textured.triangles_center)
    directions = np.tile([0.0, 0.0, -1.0], (len(points), 1))
    np.testing.assert_allclose(surface_colors(DirectionColorModel(), points, directions), [[0.5, 0.5, 1.0]] * len(points))


def test_bake_from_cameras_looks_from_the_camera_nearest_to_head_on(torus):
    # a point on top (normal +z): the camera above it wins over one at its side, and it looks down
    points = torch.tensor([[0.5, 0.0, 0.2]])
    normals = torch.tensor([[0.0, 0.0, 1.0]])
    centers = torch.tensor([[5.0, 0.0, 0.2], [1.0, 0.5, 4.0]])
    expected = torch.nn.functional.normalize(points - centers[1], dim=-1)
    torch.testing.assert_close(nearest_to_head_on(points, normals, centers), expected)
    # the bake takes that direction: with one camera far above, every texel holds (1 - d) / 2 with d pointing
    # straight down; head-on it would hold the normal map instead
    far_above = np.array([[0.0, 0.0, 1000.0]])
    textured = bake_texture(DirectionColorModel(), torus, texture_size=128, camera_centers=far_above)
    texture = torch.as_tensor(np.asarray(textured.visual.material.image.convert("RGB")), dtype=torch.float64) / 255.0
    uv = torch.as_tensor(textured.visual.uv, dtype=torch.float64)
    colors = sample_texture(texture, uv[torch.as_tensor(textured.faces)].mean(dim=1))
    np.testing.assert_allclose(colors.numpy(), 0.5 + np.zeros_like(colors.numpy()) + [0.0, 0.0, 0.5], atol=0.01)


def look_at_views(eyes, target=(0.0, 0.0, 0.0), size: int = 64, focal: float = 60.0) -> TrainingViews:
    """Cameras at `eyes` looking at `target` (OpenCV axes: x right, y down, z forward), no masks."""
    c2w = np.tile(np.eye(4), (len(eyes), 1, 1))
    for index, eye in enumerate(np.asarray(eyes, dtype=np.float64)):
        forward = np.asarray(target) - eye
        forward /= np.linalg.norm(forward)
        up = np.array([0.0, 1.0, 0.0]) if abs(forward[2]) > 0.9 else np.array([0.0, 0.0, 1.0])
        right = np.cross(forward, up)
        right /= np.linalg.norm(right)
        c2w[index, :3, :3] = np.stack([right, np.cross(forward, right), forward], axis=-1)
        c2w[index, :3, 3] = eye
    intrinsics = np.tile(np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]]), (len(eyes), 1, 1))
    return TrainingViews(intrinsics, c2w, np.full((len(eyes), 2), size), mask_paths=None)


def baked_colors_at_face_centres(textured: trimesh.Trimesh) -> torch.Tensor:
    texture = torch.as_tensor(np.asarray(textured.visual.material.image.convert("RGB")), dtype=torch.float64) / 255.0
    uv = torch.as_tensor(textured.visual.uv, dtype=torch.float64)
    return sample_texture(texture, uv[torch.as_tensor(textured.faces)].mean(dim=1))


def test_view_averaged_bake_of_a_view_independent_colour_is_the_head_on_bake(coarse_torus):
    views = look_at_views([[0.0, 0.0, 3.0], [3.0, 0.0, 1.0], [-2.0, 2.0, -1.5], [0.0, -3.0, -1.0], [1.0, 1.0, -3.0]])
    head_on = bake_texture(ColorFieldModel(), coarse_torus, texture_size=128)
    averaged = bake_texture(ColorFieldModel(), coarse_torus, texture_size=128, views=views, max_views=3)
    assert averaged.metadata["texels_seen_fraction"] > 0.6, "the views see most of the torus"
    difference = np.abs(
        np.asarray(averaged.visual.material.image, dtype=np.int64) - np.asarray(head_on.visual.material.image, dtype=np.int64)
    )
    assert difference.max() <= 1, "a colour that no view changes is the same however many views average it"


def two_squares() -> trimesh.Trimesh:
    """A 2x2 square at z = 0 and a 1x1 square above its centre at z = 0.5, both facing +z."""
    back = [[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]]
    front = [[-0.5, -0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, 0.5], [-0.5, 0.5, 0.5]]
    faces = [[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]]
    return trimesh.Trimesh(np.array(back + front, dtype=np.float64), faces, process=False)


def test_a_point_occluded_from_a_view_does_not_take_that_views_colour():
    squares = two_squares()
    # camera 0 looks straight down: the front square hides the back square's centre from it; camera 1 sees that
    # point past the front square's edge (its ray crosses z = 0.5 at x = 1.25)
    above, side = [0.0, 0.0, 3.0], [2.5, 0.0, 1.0]
    views = look_at_views([above, side])
    points = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5]])
    faces = torch.tensor([0, 2])
    selection = select_views(squares, points, faces, views, max_views=2)
    assert set(selection.view_index[0].tolist()) == {1, -1}, "the hidden point takes the side view only"
    assert set(selection.view_index[1].tolist()) == {0, 1}, "the front square's centre is seen by both"
    colors = view_averaged_colors(DirectionColorModel(), points, selection, views.c2w_opencv[:, :3, 3])
    from_side = (1.0 - (points[0] - side) / np.linalg.norm(points[0] - side)) / 2.0
    np.testing.assert_allclose(colors[0], from_side, atol=1e-6)
    # without the depth test (a tolerance that passes every depth) the view above wins the hidden point
    leaky = select_views(squares, points, faces, views, max_views=2, depth_tolerance=10.0)
    assert 0 in leaky.view_index[0].tolist()


def photographed_views(mesh: trimesh.Trimesh, eyes, folder, size: int = 128, focal: float = 120.0) -> TrainingViews:
    """`look_at_views` with photographs: `color_field` on the mesh, rasterised from each camera on black, as PNGs."""
    views = look_at_views(eyes, size=size, focal=focal)
    vertices, faces = torch.as_tensor(mesh.vertices), torch.as_tensor(mesh.faces)
    paths = []
    for index, c2w in enumerate(flip_camera_axes(views.c2w_opencv)):
        camera = PinholeCamera(camera_to_world=c2w, fx=focal, fy=focal, cx=size / 2, cy=size / 2, width=size, height=size)
        fragments = rasterize(vertices, faces, camera)
        points = interpolate_vertex_attribute(vertices, faces, fragments)
        image = torch.where(fragments.mask[..., None], color_field(points), 0.0)
        paths.append(folder / f"view_{index}.png")
        Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(paths[-1])
    views.image_paths = paths
    return views


def test_a_texture_from_the_photographs_holds_the_photographed_colour(coarse_torus, tmp_path):
    eyes = [[0.0, 0.0, 3.0], [3.0, 0.0, 1.0], [-2.0, 2.0, -1.5], [0.0, -3.0, -1.0], [1.0, 1.0, -3.0]]
    views = photographed_views(coarse_torus, eyes, tmp_path)
    # the model's colour is wrong everywhere (the normal map): only the photographs can give the colour field
    textured = bake_texture(DirectionColorModel(), coarse_torus, texture_size=128, views=views, max_views=3, from_photographs=True)
    colors = baked_colors_at_face_centres(textured)
    expected = color_field(torch.as_tensor(textured.triangles_center))
    selection = select_views(
        coarse_torus, np.asarray(coarse_torus.triangles_center), torch.arange(len(coarse_torus.faces)), views, 3, neighbourhood_px=1
    )
    seen = selection.weight.sum(dim=1) > 0
    assert seen.float().mean() > 0.6
    error = (colors[seen] - expected[seen]).abs()
    # 8-bit photographs rasterised at 128 px, sampled bilinearly at the points' projections (0.0033 and 0.0008)
    assert error.mean() < 0.006 and error.median() < 0.002
    # and point by point: the average of the selected views' photographs, the unseen points left out
    points = np.asarray(coarse_torus.triangles_center)
    averaged, from_photos = photograph_averaged_colors(points, selection, views)
    np.testing.assert_array_equal(from_photos, seen.numpy())
    assert np.abs(averaged[~from_photos]).max() == 0.0
    # a photograph moved away since training: one sentence naming it and the other colour source
    (tmp_path / "view_2.png").unlink()
    with pytest.raises(UserInputError, match=r"view_2\.png: this training photograph is missing.*--texture-color views\."):
        photograph_averaged_colors(points, selection, views)


def test_texels_that_no_view_sees_take_the_head_on_colour(coarse_torus):
    above = np.array([0.0, 0.0, 3.0])
    textured = bake_texture(DirectionColorModel(), coarse_torus, texture_size=128, views=look_at_views([above]))
    colors = baked_colors_at_face_centres(textured)
    centers = torch.as_tensor(textured.triangles_center).requires_grad_(True)
    (gradient,) = torch.autograd.grad(torus_sdf(centers).sum(), centers)
    normals = torch.nn.functional.normalize(gradient, dim=-1)
    from_above = (1.0 - torch.nn.functional.normalize(centers.detach() - torch.as_tensor(above), dim=-1)) / 2.0
    head_on = (1.0 + normals) / 2.0
    bottom, top = normals[:, 2] < -0.3, normals[:, 2] > 0.5
    assert (colors[bottom] - head_on[bottom]).abs().max() < 0.05, "the underside, unseen, is baked head-on"
    assert (colors[top] - from_above[top]).abs().mean() < 0.01, "the top takes the colour seen from the camera"
    assert (head_on[top] - from_above[top]).abs().mean() > 0.1, "the two colours differ on the top"


def texel_coverage_counts(uv: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """How many UV triangles hold each texel centre: the slow per-triangle reference (no depth test), so any
    overlap between charts counts twice."""
    counts = np.zeros((size, size), dtype=np.int64)
    corners = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], axis=-1)[faces]  # [F, 3, 2]
    for triangle in corners:
        low = np.floor(triangle.min(axis=0)).astype(int)
        high = np.ceil(triangle.max(axis=0)).astype(int)
        columns, rows = np.meshgrid(np.arange(low[0], high[0]), np.arange(low[1], high[1]), indexing="xy")
        centers = np.stack([columns.ravel() + 0.5, rows.ravel() + 0.5], axis=-1)
        a, b, c = triangle
        area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if abs(area) < 1e-12:
            continue
        edges = [(b, c), (c, a), (a, b)]
        weights = np.stack(
            [((e[0] - s[0]) * (centers[:, 1] - s[1]) - (e[1] - s[1]) * (centers[:, 0] - s[0])) / area for s, e in edges],
            axis=-1,
        )
        inside = (weights > 1e-9).all(axis=-1)  # strictly inside: a shared edge is not an overlap
        np.add.at(counts, (rows.ravel()[inside], columns.ravel()[inside]), 1)
    return counts


def test_atlas_uvs_lie_in_the_unit_square_without_overlapping_charts(torus):
    atlas = unwrap(torus, texture_size=256)
    assert atlas.uv.min() >= 0.0 and atlas.uv.max() <= 1.0
    assert len(atlas.faces) == len(torus.faces)
    # the atlas vertices are copies of the mesh's: the same triangles in 3D
    np.testing.assert_array_equal(np.asarray(torus.vertices)[atlas.source_vertex[atlas.faces]], torus.triangles)
    counts = texel_coverage_counts(atlas.uv, atlas.faces, 256)
    assert counts.max() == 1, f"{(counts > 1).sum()} texels lie under two charts"
    assert (counts == 1).mean() > 0.3, "the charts fill little of the atlas"
    # the reference does see overlaps: every triangle drawn twice
    doubled = texel_coverage_counts(atlas.uv, np.concatenate([atlas.faces[:50], atlas.faces[:50]]), 256)
    assert doubled.max() == 2
    # and the fast rasteriser covers the texels the reference covers
    fragments = rasterize_atlas(atlas)
    reference = counts > 0
    assert (fragments.covered.numpy() & reference).sum() >= 0.99 * reference.sum()


def test_baked_texture_holds_the_colour_field_on_the_surface(torus):
    model = ColorFieldModel()
    textured = bake_texture(model, torus, texture_size=256)
    texture = torch.as_tensor(np.asarray(textured.visual.material.image.convert("RGB")), dtype=torch.float64) / 255.0
    uv = torch.as_tensor(textured.visual.uv, dtype=torch.float64)
    faces = torch.as_tensor(textured.faces)
    # at the centroid of every face: the texture equals the colour field there, to about a texel's change
    centroid_uv = uv[faces].mean(dim=1)
    expected = color_field(torch.as_tensor(textured.triangles_center))
    error = (sample_texture(texture, centroid_uv) - expected).abs()
    assert error.mean() < 0.01 and error.max() < 0.06
    # rendered by the rasteriser: the textured mesh shows the colour field at each pixel's surface point
    camera = PinholeCamera(
        camera_to_world=np.array([[1, 0, 0, 0], [0, 0, -1, -2.0], [0, 1, 0, 0.8], [0, 0, 0, 1]], dtype=np.float64),
        fx=60.0, fy=60.0, cx=40.0, cy=30.0, width=80, height=60,
    )
    vertices = torch.as_tensor(textured.vertices, dtype=torch.float64)
    fragments = rasterize(vertices, faces, camera)
    pixel_uv = interpolate_vertex_attribute(uv, faces, fragments)[fragments.mask]
    pixel_points = interpolate_vertex_attribute(vertices, faces, fragments)[fragments.mask]
    assert len(pixel_points) > 500
    pixel_error = (sample_texture(texture, pixel_uv) - color_field(pixel_points)).abs()
    assert pixel_error.mean() < 0.01


def mip_level(texture: np.ndarray, level: int) -> np.ndarray:
    """The texture averaged over blocks of 2^level texels, as a mip map's level."""
    block = 2**level
    size = texture.shape[0] // block
    return texture.reshape(size, block, size, block, 3).mean(axis=(1, 3))


def test_filled_gutters_keep_chart_borders_clean_under_mip_mapping(torus):
    """Charts 8 texels apart (the default padding at 2048): at mip level 2 a texel averages 4x4 texels, which
    near a chart's border are its own and the gutter's half next to it."""
    atlas = unwrap(torus, texture_size=256, padding_px=8)
    fragments = rasterize_atlas(atlas)
    covered = fragments.covered.numpy()
    points = texel_points(np.asarray(torus.vertices), atlas, fragments)
    texture = np.zeros((256, 256, 3), dtype=np.uint8)
    texture[covered] = np.round(color_field(torch.as_tensor(points)).numpy() * 255).astype(np.uint8)
    filled = fill_gutters(texture, covered)
    assert np.array_equal(filled[covered], texture[covered]), "texels under the charts are kept"

    # every vertex lies on a chart's border or inside it: look the colour up there at mip level 2
    uv = torch.as_tensor(atlas.uv)
    expected = color_field(torch.as_tensor(np.asarray(torus.vertices)[atlas.source_vertex]))
    errors = {}
    for name, image in (("black gutters", texture), ("filled gutters", filled)):
        level_2 = torch.as_tensor(mip_level(image.astype(np.float64) / 255.0, 2))
        errors[name] = (sample_texture(level_2, uv) - expected).abs().max(dim=-1).values
    assert errors["filled gutters"].max() < 0.1
    assert errors["black gutters"].max() > 0.3, "unfilled gutters darken the chart borders (the seam the fill removes)"


def test_textured_obj_and_glb_load_back_with_their_texture(torus, tmp_path):
    textured = bake_texture(ColorFieldModel(), torus, texture_size=128)
    written = export_textured_mesh(textured, tmp_path / "out" / "torus.glb")
    assert sorted(path.name for path in written) == ["torus.glb", "torus.mtl", "torus.obj", "torus.png"]
    image = np.asarray(textured.visual.material.image.convert("RGB"))
    for name in ("torus.obj", "torus.glb"):
        loaded = trimesh.load(tmp_path / "out" / name, force="mesh", process=False)
        assert loaded.visual.kind == "texture", name
        assert len(loaded.faces) == len(textured.faces)
        material = loaded.visual.material
        loaded_image = material.image if hasattr(material, "image") else material.baseColorTexture
        assert loaded_image.size == (128, 128)
        assert np.array_equal(np.asarray(loaded_image.convert("RGB")), image), name
        # the same texture coordinates at the same positions: (position, uv) rows sorted on values rounded to 1e-5,
        # so that coordinates the file rounds differently, and a seam's copies of a vertex, sort alike
        def rows(mesh):
            return np.hstack([np.asarray(mesh.vertices), np.asarray(mesh.visual.uv)])

        def sorted_rows(mesh):
            values = rows(mesh)
            return values[np.lexsort(np.round(values, 5).T[::-1])]

        np.testing.assert_allclose(sorted_rows(loaded), sorted_rows(textured), atol=1e-5)
    # the MTL does not darken the texture (viewers multiply map_Kd by Kd)
    assert "Kd 1.00000000 1.00000000 1.00000000" in (tmp_path / "out" / "torus.mtl").read_text()


def test_mesh_command_texture_with_cleanup_on_a_trained_run(tiny_neus_run, tmp_path, capsys):
    from neurecon_ns.scripts.mesh import Mesh

    Mesh(
        load_config=tiny_neus_run, output_path=tmp_path / "run.obj", resolution=48, texture=True, texture_size=128,
        target_faces=1500, min_component_fraction=0.05, fill_holes=20, device="cpu", progress=False,
    ).main()
    output = capsys.readouterr().out
    assert "simplify:" in output and "small components:" in output and "fill holes:" in output
    seen = re.search(
        r"texture: the photographs' colour averaged over the training views that see each point \((\d+) views\); ([\d.]+)% of the texels seen",
        " ".join(output.split()),
    )
    assert seen is not None, output
    assert float(seen.group(2)) > 20.0, "the training views see much of the surface"
    for suffix in (".obj", ".mtl", ".png", ".glb"):
        assert (tmp_path / f"run{suffix}").is_file(), suffix
    loaded = trimesh.load(tmp_path / "run.glb", force="mesh", process=False)
    assert loaded.visual.kind == "texture"
    assert 1000 <= len(loaded.faces) <= 1500
    texture = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    assert texture.std() > 0, "the bake gave one flat colour"

    with pytest.raises(UserInputError, match=r"run\.ply: --texture writes OBJ \(\+ MTL \+ PNG\) and GLB, not '\.ply'; end the output path with \.obj or \.glb\."):
        Mesh(load_config=tiny_neus_run, output_path=tmp_path / "run.ply", texture=True).main()
    # head-on instead: another texture of the same mesh
    Mesh(
        load_config=tiny_neus_run, output_path=tmp_path / "normal.glb", resolution=48, texture=True, texture_size=128,
        target_faces=1500, min_component_fraction=0.05, fill_holes=20, device="cpu", progress=False,
        texture_color="normal",
    ).main()
    assert "averaged over" not in capsys.readouterr().out
    head_on = trimesh.load(tmp_path / "normal.glb", force="mesh", process=False)
    assert len(head_on.faces) == len(loaded.faces)
    head_on_texture = np.asarray(head_on.visual.material.baseColorTexture.convert("RGB"))
    assert np.abs(head_on_texture.astype(int) - texture.astype(int)).mean() > 1.0
    # the radiance field's colour averaged over the views: another texture of the same mesh
    Mesh(
        load_config=tiny_neus_run, output_path=tmp_path / "views.glb", resolution=48, texture=True, texture_size=128,
        target_faces=1500, min_component_fraction=0.05, fill_holes=20, device="cpu", progress=False,
        texture_color="views",
    ).main()
    seen = re.search(
        r"texture: the radiance field's colour averaged over at most 4 of the training views that see each point \(\d+ views\); ([\d.]+)% of the texels seen",
        " ".join(capsys.readouterr().out.split()),
    )
    assert seen is not None and float(seen.group(1)) > 20.0
    network = trimesh.load(tmp_path / "views.glb", force="mesh", process=False)
    network_texture = np.asarray(network.visual.material.baseColorTexture.convert("RGB"))
    assert np.abs(network_texture.astype(int) - texture.astype(int)).mean() > 1.0

    with pytest.raises(UserInputError, match="--texture-views 0: give at least 1 view per texel"):
        Mesh(load_config=tiny_neus_run, output_path=tmp_path / "run.obj", texture=True, texture_views=0).main()
    with pytest.raises(UserInputError, match="--target-faces 2: give at least 4 faces"):
        Mesh(load_config=tiny_neus_run, output_path=tmp_path / "run.ply", target_faces=2).main()
    with pytest.raises(UserInputError, match="--min-component-fraction 2: give a fraction between 0 and 1"):
        Mesh(load_config=tiny_neus_run, output_path=tmp_path / "run.ply", min_component_fraction=2.0).main()


def test_projection_with_lens_distortion_inverts_nerfstudios_rays():
    """A point projected through a distorted camera lands on the pixel whose nerfstudio ray passes through it, so
    the texture samples a photograph of a capture with lens distortion (COLMAP's OPENCV model) where it shows the point."""
    from nerfstudio.cameras.cameras import Cameras, CameraType

    from neurecon_ns.render.rasterize import project_to_pixels

    params = torch.tensor([[-0.12, 0.05, 0.01, 0.0, 0.002, -0.001]])
    intrinsics = dict(fx=300.0, fy=310.0, cx=160.0, cy=120.0, width=320, height=240)
    cameras = Cameras(camera_to_worlds=torch.eye(4)[None, :3], distortion_params=params, camera_type=CameraType.PERSPECTIVE, **intrinsics)
    generator = torch.Generator().manual_seed(0)
    # points in front of the camera (it looks along -z) out to the image's corners
    points = torch.cat([(torch.rand(200, 2, generator=generator) - 0.5) * torch.tensor([1.0, 0.75]) * 2.0, -torch.ones(200, 1)], dim=-1)
    points = points * (1.0 + 2.0 * torch.rand(200, 1, generator=generator))
    distorted = PinholeCamera(camera_to_world=np.eye(4), distortion=params[0].numpy(), **intrinsics)
    pinhole = PinholeCamera(camera_to_world=np.eye(4), **intrinsics)
    for camera, expect_on_ray in ((distorted, True), (pinhole, False)):
        pixels, _ = project_to_pixels(points.double(), camera)
        rays = cameras.generate_rays(camera_indices=torch.zeros(len(points), 1, dtype=torch.long), coords=pixels.flip(-1).float())
        to_points = torch.nn.functional.normalize(points - rays.origins, dim=-1)
        directions = rays.directions.double()
        angle = torch.atan2(torch.linalg.cross(directions, to_points.double()).norm(dim=-1), (directions * to_points).sum(dim=-1))
        if expect_on_ray:
            assert angle.max() < 1e-5, angle.max()
        else:
            assert angle.max() > 0.02, "the distortion moves the corners' pixels"
