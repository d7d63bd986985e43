"""Training metrics with masks: `psnr` against the photograph as the model is asked to render it (the object on
the model's background colour when a mask loss is on), and `psnr_masked` inside the mask."""

import torch
from nerfstudio.data.scene_box import SceneBox

from neurecon_ns.models.neus import NeuSModelConfig


def metrics_of(model, rendered, photograph, mask):
    model.eval()
    return model.get_metrics_dict({"rgb": rendered}, {"image": photograph, "fg_mask": mask})


def test_masked_training_psnr_compares_the_object_on_the_background_it_renders():
    torch.manual_seed(0)
    scene_box = SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
    model = NeuSModelConfig(mask_loss_weight=0.1, background_color="black").setup(scene_box=scene_box, num_train_data=1)
    photograph = torch.rand(256, 3) * 0.5 + 0.5  # a bright backdrop behind the object
    mask = (torch.rand(256, 1) > 0.5).float()
    object_rgb = photograph + 0.01 * torch.randn_like(photograph)  # the object rendered to within 0.01
    rendered = object_rgb * mask  # and black where the mask says there is nothing, as the mask loss asks
    metrics = metrics_of(model, rendered, photograph, mask)
    raw = -10.0 * torch.log10(((rendered - photograph) ** 2).mean())
    assert raw < 10.0, "against the full photograph the backdrop dominates: it says nothing of the object"
    assert 35.0 < metrics["psnr"] < 45.0 and 35.0 < metrics["psnr_masked"] < 45.0, metrics
    # an error outside the mask shows in psnr, not in psnr_masked
    worse = metrics_of(model, rendered + 0.2 * (1 - mask), photograph, mask)
    assert worse["psnr"] < 20.0 and torch.isclose(worse["psnr_masked"], metrics["psnr_masked"])

    without_mask_loss = NeuSModelConfig(mask_loss_weight=0.0).setup(scene_box=scene_box, num_train_data=1)
    assert torch.isclose(metrics_of(without_mask_loss, rendered, photograph, mask)["psnr"], raw)
