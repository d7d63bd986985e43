"""The mesh rasteriser against analytic spheres, nerfstudio's own rays, and a ray-casting reference."""

import numpy as np
import pytest
import torch
import trimesh

from neurecon_ns.render.camera_paths import look_at
from neurecon_ns.render.rasterize import MeshRenderer, PinholeCamera, rasterize, raycast_fragments


def tensors(mesh):
    return torch.as_tensor(mesh.vertices, dtype=torch.float64), torch.as_tensor(mesh.faces, dtype=torch.long)


def camera_at(position, width=80, height=60, focal=70.0, cx=None, cy=None, target=(0.0, 0.0, 0.0)):
    c2w = look_at(np.array([position], dtype=np.float64), np.array(target), np.array([0.0, 0.0, 1.0]))[0]
    return PinholeCamera(c2w, focal, focal, width / 2 if cx is None else cx, height / 2 if cy is None else cy, width, height)


def sphere_hits(camera, center, radius):
    """Analytic first hit of each pixel's ray with a sphere: (hit mask, z-depth, distance of ray to centre)."""
    origins, directions = camera.pixel_rays()
    to_center = center - origins
    along = np.einsum("hwk,hwk->hw", to_center, directions)
    miss_distance = np.linalg.norm(to_center - along[..., None] * directions, axis=-1)
    t = along - np.sqrt(np.clip(radius**2 - miss_distance**2, 0.0, None))
    points = origins + t[..., None] * directions
    depth = -((points - camera.camera_to_world[:3, 3]) @ camera.camera_to_world[:3, 2])
    return miss_distance < radius, depth, miss_distance


@pytest.mark.parametrize("center", [(0.0, 0.0, 0.0), (0.4, -0.3, 0.25)])
def test_unit_sphere_lands_on_the_analytic_pixels(center):
    center = np.array(center)
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=1.0)
    sphere.apply_translation(center)
    camera = camera_at((3.2, -1.0, 1.1), width=96, height=72, focal=60.0, cx=50.0, cy=33.0)
    fragments = rasterize(*tensors(sphere), camera)
    hit, depth, miss_distance = sphere_hits(camera, center, 1.0)
    mask = fragments.mask.numpy()
    clear = np.abs(miss_distance - 1.0) > 0.01  # pixels whose ray does not graze the silhouette
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(mask[clear], hit[clear])
    assert hit.sum() > 500 and (~hit).sum() > 500  # the sphere and background are both in the picture
    # depth on the polygonal sphere is within its tessellation error (< 3e-3 here) of the true sphere's
    np.testing.assert_allclose(fragments.depth.numpy()[hit & clear], depth[hit & clear], atol=3e-3)
    assert np.isinf(fragments.depth.numpy()[~mask]).all()


def test_pixels_agree_with_nerfstudio_rays():
    """The rasteriser's pixel (i, j) is the pixel of nerfstudio's ray (i, j) for the same Cameras."""
    from nerfstudio.cameras.cameras import Cameras

    c2w = look_at(np.array([[0.5, -2.8, 0.9]]), np.array([0.1, 0.0, 0.0]), np.array([0.0, 0.0, 1.0]))[0]
    cameras = Cameras(camera_to_worlds=torch.tensor(c2w[:3, :4], dtype=torch.float32)[None], fx=55.0, fy=50.0,
                      cx=30.0, cy=21.0, width=64, height=40)
    camera = PinholeCamera.from_cameras(cameras, 0)
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.8)
    fragments = rasterize(*tensors(sphere), camera)
    rays = cameras.generate_rays(camera_indices=0, keep_shape=True)
    origins, directions = rays.origins.double().numpy(), rays.directions.double().numpy()
    along = -np.einsum("hwk,hwk->hw", origins, directions)
    miss_distance = np.linalg.norm(origins + along[..., None] * directions, axis=-1)
    clear = np.abs(miss_distance - 0.8) > 0.01
    np.testing.assert_array_equal(fragments.mask.numpy()[clear], (miss_distance < 0.8)[clear])


def test_nearer_surface_hides_the_farther_one():
    near_box = trimesh.creation.box(extents=(0.6, 0.6, 0.6))
    near_box.apply_translation((0.0, -1.0, 0.0))
    far_sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    scene = trimesh.util.concatenate([far_sphere, near_box])
    camera = camera_at((0.0, -5.0, 0.0), width=40, height=40, focal=40.0)  # the box is between camera and sphere
    fragments = rasterize(*tensors(scene), camera)
    center_face = int(fragments.face_index[20, 20])
    assert center_face >= len(far_sphere.faces)  # a face of the box
    np.testing.assert_allclose(float(fragments.depth[20, 20]), 5.0 - 1.3, atol=1e-9)  # the box's face at y = -1.3


def test_agrees_with_the_ray_casting_reference():
    mesh = trimesh.creation.torus(major_radius=0.7, minor_radius=0.25, major_sections=48, minor_sections=24)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(0.7, [1.0, 0.3, 0.0]))
    camera = camera_at((1.5, -2.4, 1.3), width=90, height=70, focal=75.0)
    fragments = rasterize(*tensors(mesh), camera)
    reference = raycast_fragments(mesh, camera)
    agree = fragments.face_index == reference.face_index
    assert agree.float().mean() > 0.995  # only rays through shared edges may pick the neighbouring face
    both = fragments.mask & reference.mask
    assert both.sum() > 1000
    np.testing.assert_allclose(fragments.depth[both].numpy(), reference.depth[both].numpy(), atol=1e-5)
    np.testing.assert_allclose(fragments.barycentric[agree & both].numpy(), reference.barycentric[agree & both].numpy(), atol=1e-5)


def test_chunked_rasterisation_is_identical():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    camera = camera_at((0.0, -3.0, 0.5))
    whole = rasterize(*tensors(sphere), camera)
    chunked = rasterize(*tensors(sphere), camera, max_pairs=97)
    assert torch.equal(whole.face_index, chunked.face_index)
    assert torch.equal(whole.depth, chunked.depth)


def test_geometry_behind_the_camera_is_not_drawn():
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    camera = camera_at((0.0, -3.0, 0.0), target=(0.0, -6.0, 0.0))  # looking away from the sphere
    assert not rasterize(*tensors(sphere), camera).mask.any()


def test_shading_faces_the_light_and_normals_match_the_model_convention():
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=1.0)
    renderer = MeshRenderer(sphere)
    camera = camera_at((0.0, -3.0, 0.0), width=41, height=41, focal=40.0)
    shaded = renderer.render(camera, "shaded", background=1.0).numpy()
    # the pixel facing the headlight is lit fully (albedo 0.8), the rim much less, the background is white
    np.testing.assert_allclose(shaded[20, 20], 0.8, atol=2e-3)
    rim = shaded[20][np.any(shaded[20] < 1.0, axis=-1)]
    assert rim[0, 0] < 0.6 and rim[-1, 0] < 0.6
    np.testing.assert_allclose(shaded[0, 0], 1.0)
    normal = renderer.render(camera, "normal").numpy()
    np.testing.assert_allclose(normal[20, 20], (np.array([0.0, -1.0, 0.0]) + 1.0) / 2.0, atol=2e-3)  # faces the camera (-y)


def test_vertex_colours_are_interpolated():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    sphere.visual.vertex_colors = np.tile([255, 0, 0, 255], (len(sphere.vertices), 1)).astype(np.uint8)
    image = MeshRenderer(sphere).render(camera_at((0.0, -3.0, 0.0), width=21, height=21, focal=20.0), "vertex").numpy()
    np.testing.assert_allclose(image[10, 10], [1.0, 0.0, 0.0], atol=2e-3)
