"""The colour loss of masked training: inside the mask only (NeuS), or on both sides of the silhouette
(`color_loss_outside_mask`), where opacity misplaced across the silhouette costs the same either way."""

import pytest
import torch
from nerfstudio.data.scene_box import SceneBox

from neurecon_ns.models.neus import NeuSModelConfig

OBJECT_RGB = torch.tensor([0.6, 0.4, 0.3])
BACKGROUND_RGB = torch.zeros(3)


def color_loss(outside: bool, covered_inside: float, covered_outside: float, with_background: bool = True) -> float:
    """rgb_loss of two rays, one inside the mask and one beside the object, each `covered_*` by the surface."""
    scene_box = SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
    model = NeuSModelConfig(mask_loss_weight=0.5, background_color="black", color_loss_outside_mask=outside).setup(
        scene_box=scene_box, num_train_data=1
    )
    model.eval()
    accumulation = torch.tensor([[covered_inside], [covered_outside]])
    outputs = {
        "rgb": accumulation * OBJECT_RGB + (1.0 - accumulation) * BACKGROUND_RGB,
        "accumulation": accumulation,
        "background_rgb": BACKGROUND_RGB.expand(2, 3),
    }
    if not with_background:
        del outputs["background_rgb"]
    photograph = torch.stack([OBJECT_RGB, torch.tensor([0.9, 0.9, 0.2])])  # a bright backdrop beside the object
    batch = {"image": photograph, "fg_mask": torch.tensor([[True], [False]])}
    return float(model.get_loss_dict(outputs, batch)["rgb_loss"])


def test_neus_masked_colour_loss_sees_only_the_object_side_of_the_silhouette():
    assert color_loss(False, 1.0, 1.0) == 0.0, "a ray beside the object costs no colour however opaque"
    assert color_loss(False, 0.5, 0.0) > 0.1


@pytest.mark.parametrize("covered", [0.25, 0.5, 0.9])
def test_colour_loss_outside_the_mask_charges_misplaced_opacity_alike_on_both_sides(covered):
    half_missed = color_loss(True, 1.0 - covered, 0.0)  # the object's ray misses `covered` of the surface
    spilled = color_loss(True, 1.0, covered)  # the backdrop's ray is covered that much
    assert half_missed > 0.0
    assert spilled == pytest.approx(half_missed, rel=1e-5)
    assert color_loss(True, 1.0, 0.0) == 0.0
    # outside training the background is the constant colour, which the outputs do not carry
    assert color_loss(True, 1.0, covered, with_background=False) == pytest.approx(spilled, rel=1e-5)
