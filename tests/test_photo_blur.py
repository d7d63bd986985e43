"""Training photographs coarse to fine: the blur, its schedule, and the rays a blurred step gets."""

import math

import pytest
import torch

from neurecon_ns.data.datamanager import gaussian_blur
from neurecon_ns.errors import UserInputError
from neurecon_ns.training import method_config, set_model_setting, setup_trainer, small_cpu_config


def stripes(period: float, height: int = 24, width: int = 96) -> torch.Tensor:
    """One image `[1, H, W, 3]` of vertical sine stripes of `period` pixels between 0.2 and 0.8."""
    x = torch.arange(width, dtype=torch.float32)
    row = 0.5 + 0.3 * torch.sin(2 * math.pi * x / period)
    return row.view(1, 1, width, 1).expand(1, height, width, 3).clone()


def amplitude(images: torch.Tensor) -> float:
    """Half the peak-to-peak of the middle row, away from the borders."""
    row = images[0, images.shape[1] // 2, 24:-24, 0]
    return float(row.max() - row.min()) / 2


def test_the_blur_takes_out_a_fine_repeat_and_keeps_a_coarse_one():
    """A Gaussian of std sigma keeps `exp(-2 pi^2 sigma^2 / period^2)` of a sine: at sigma 2 px, a 6 px repeat
    (bricks at a DTU scale) keeps 11%, a 48 px one 98%."""
    fine, coarse = gaussian_blur(stripes(6.0), 2.0), gaussian_blur(stripes(48.0), 2.0)
    assert amplitude(fine) == pytest.approx(0.3 * math.exp(-2 * math.pi**2 * 4 / 36), abs=0.01)
    assert amplitude(coarse) == pytest.approx(0.3 * math.exp(-2 * math.pi**2 * 4 / 48**2), abs=0.01)


def test_the_blur_keeps_a_flat_image_flat_to_its_borders_and_keeps_the_type():
    flat = torch.full((2, 10, 12, 3), 0.25)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat, atol=1e-6)
    photos = (stripes(8.0) * 255).round().to(torch.uint8)
    blurred = gaussian_blur(photos, 1.0)
    assert blurred.dtype == torch.uint8 and blurred.shape == photos.shape
    assert abs(blurred.float().mean() - photos.float().mean()) < 1.0


def test_a_blur_wider_than_the_photographs_is_refused():
    with pytest.raises(UserInputError, match="photo_blur_sigma 5.0: wider than the photographs"):
        gaussian_blur(torch.zeros(1, 8, 8, 3), 5.0)


def test_training_steps_see_blurred_photographs_until_the_end_of_the_blur(small_scene, tmp_path):
    """neus-fast at its CPU size with the blur 3 px wide shrinking to none at step 4: the first steps' rays get the
    blurred photograph's colours at their pixels, the width shrinks in half pixels, and from step 4 on the rays get
    the photographs' own colours."""
    config = small_cpu_config(method_config("neus-fast"), small_scene.output_dir, tmp_path, steps=6)
    set_model_setting(config, "trainer.pipeline.datamanager.photo_blur_sigma", 3.0)
    set_model_setting(config, "trainer.pipeline.datamanager.photo_blur_end", 4)
    datamanager = setup_trainer(config).pipeline.datamanager
    assert [datamanager.photo_blur_sigma(step) for step in range(6)] == [3.0, 2.0, 1.5, 1.0, 0.0, 0.0]
    cached = next(iter(datamanager.train_image_dataloader))
    photographs, position = cached["image"], torch.argsort(cached["image_idx"])  # the cache's order is its own

    def colours(step):
        _, batch = datamanager.next_train(step)
        image, y, x = batch["indices"].unbind(-1)
        image = position[image]
        return batch["image"], photographs[image, y, x], gaussian_blur(photographs, 3.0)[image, y, x]

    got, original, blurred = colours(0)
    assert torch.allclose(got, blurred, atol=1e-5)
    assert (got - original).abs().mean() > 1e-3
    got, original, _ = colours(4)
    assert torch.equal(got, original)
    plain = small_cpu_config(method_config("neus-fast"), small_scene.output_dir, tmp_path / "plain", steps=6)
    assert plain.pipeline.datamanager.photo_blur_sigma == 0.0
