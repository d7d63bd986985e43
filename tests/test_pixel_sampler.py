"""The error-weighted pixel sampler: where its rays go, what it keeps, and that training feeds it."""

import pytest
import torch
from nerfstudio.data.pixel_samplers import PixelSamplerConfig

from neurecon_ns.data.pixel_sampler import UNSEEN_TILE_ERROR, ErrorWeightedPixelSamplerConfig
from neurecon_ns.errors import UserInputError
from neurecon_ns.models.surface_model import ray_errors
from neurecon_ns.training import method_config, set_model_setting, setup_trainer, small_cpu_config

HEIGHT, WIDTH = 21, 30  # not multiples of the tile: the last row and column of tiles are cut short


def image_batch(num_images: int = 3):
    """What nerfstudio's image cache hands the sampler: images and their dataset indices (here 5, 6, 7)."""
    return {"image": torch.rand(num_images, HEIGHT, WIDTH, 3), "image_idx": torch.arange(5, 5 + num_images)}


def sampler(error_share: float, rays: int = 4000):
    return ErrorWeightedPixelSamplerConfig(error_share=error_share, tile_size=8).setup(num_rays_per_batch=rays)


def test_without_a_share_it_draws_as_nerfstudio_does():
    batch = image_batch()
    torch.manual_seed(3)
    ours = sampler(0.0).sample(batch)["indices"]
    torch.manual_seed(3)
    theirs = PixelSamplerConfig().setup(num_rays_per_batch=4000).sample(batch)["indices"]
    assert torch.equal(ours, theirs)


def test_rays_go_to_the_tiles_in_proportion_to_their_errors():
    torch.manual_seed(0)
    pixels = sampler(0.5)
    batch = image_batch()
    pixels.sample(batch)  # sizes the tiles: 3 x 4 of them per image (21 x 30 pixels in tiles of 8)
    assert pixels.tile_errors.shape == (8, 3, 4)
    assert torch.all(pixels.tile_errors == UNSEEN_TILE_ERROR)
    pixels.tile_errors.zero_()
    pixels.tile_errors[6, 2, 3] = 3.0  # image 6, the bottom-right tile: rows 16-20, columns 24-29
    pixels.tile_errors[7, 0, 0] = 1.0
    indices = pixels.sample(batch)["indices"]
    by_error = indices[2000:]  # the uniform half comes first
    in_corner = (by_error[:, 0] == 6) & (by_error[:, 1] >= 16) & (by_error[:, 2] >= 24)
    in_first = (by_error[:, 0] == 7) & (by_error[:, 1] < 8) & (by_error[:, 2] < 8)
    assert torch.all(in_corner | in_first)
    assert in_corner.float().mean().item() == pytest.approx(0.75, abs=0.04)
    # every pixel of the cut-short tile is drawn, none beyond the image
    corner = by_error[in_corner]
    assert corner[:, 1].max() == HEIGHT - 1 and corner[:, 2].max() == WIDTH - 1
    assert set(corner[:, 1].tolist()) == set(range(16, HEIGHT))
    # the uniform half still covers every image
    assert set(indices[:2000, 0].tolist()) == {5, 6, 7}


def test_recorded_errors_land_in_their_tiles():
    pixels = sampler(0.5)
    pixels.sample(image_batch())
    pixels.record_errors(torch.tensor([[5, 0, 0], [6, 20, 29], [7, 9, 17]]), torch.tensor([0.1, 0.2, 0.3]))
    assert pixels.tile_errors[5, 0, 0].item() == pytest.approx(0.1)
    assert pixels.tile_errors[6, 2, 3].item() == pytest.approx(0.2)
    assert pixels.tile_errors[7, 1, 2].item() == pytest.approx(0.3)
    assert (pixels.tile_errors == UNSEEN_TILE_ERROR).sum().item() == 8 * 3 * 4 - 3


def test_ray_errors_count_colour_on_the_object_and_the_missed_mask():
    rgb = torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.2, 0.2], [0.0, 0.0, 0.0]])
    gt = torch.tensor([[0.2, 0.5, 0.8], [0.9, 0.9, 0.9], [0.0, 0.0, 0.0]])
    accumulation = torch.tensor([[1.0], [0.25], [1.0]])
    mask = torch.tensor([[1.0], [0.0], [0.0]])
    errors = ray_errors(rgb, gt, accumulation, mask)
    assert errors.tolist() == pytest.approx([0.2, 0.25, 1.0])
    assert ray_errors(rgb, gt, accumulation, None).tolist() == pytest.approx([0.2, 0.7, 0.0])


def test_a_share_outside_zero_to_one_is_refused():
    with pytest.raises(UserInputError, match="error-share 1.5: give a share between 0 and 1"):
        sampler(1.5)


def test_training_records_each_batch_errors(small_scene, tmp_path):
    """A few steps of neus-fast at its CPU size with half the rays drawn by error: the model hands every batch's
    errors to the sampler, so the tiles its rays reached hold errors below the unseen value."""
    config = small_cpu_config(method_config("neus-fast"), small_scene.output_dir, tmp_path, steps=4)
    set_model_setting(config, "trainer.pipeline.datamanager.pixel_sampler.error_share", 0.5)
    trainer = setup_trainer(config)
    trainer.train()
    tiles = trainer.pipeline.datamanager.train_pixel_sampler.tile_errors
    recorded = tiles[tiles < UNSEEN_TILE_ERROR]
    assert recorded.numel() > 0
    assert torch.all((recorded >= 0) & (recorded <= UNSEEN_TILE_ERROR))
