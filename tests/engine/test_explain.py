"""Grad-CAM on the CLIP image tower for the text, auxiliary and fused targets."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from air_app.engine.explain import CosineTarget, FusedTarget, explain_image
from air_app.engine.pseudolabel import aux_probs, fuse, prototypes, text_probs


@pytest.fixture(scope="module")
def setup(tiny_clip, demo_images):
    classes = ["red circle", "blue square", "green triangle", "striped texture"]
    text = tiny_clip.text_classifier(classes, ["a photo of a {}."]).numpy().astype(np.float64)
    rng = np.random.default_rng(0)
    syn = rng.standard_normal((12, text.shape[1]))
    labels = np.repeat(np.arange(4), 3)
    kept = np.ones(12, bool)
    kept[labels == 3] = False  # a class without prototype
    protos, has = prototypes(syn, labels, kept, 4)
    image = str(sorted(demo_images.rglob("*.jpg"))[0])
    return classes, text, protos, has, image


def test_fused_target_equals_the_fused_probability(tiny_clip, setup):
    classes, text, protos, has, image = setup
    from PIL import Image

    x = tiny_clip.preprocess(Image.open(image).convert("RGB")).unsqueeze(0)
    emb = tiny_clip.model.encode_image(x)[0]
    f = F.normalize(emb.detach(), dim=0).numpy()[None].astype(np.float64)
    mask = np.array([True, True, False, True])
    expected = fuse(text_probs(f, text, tiny_clip.logit_scale, mask),
                    aux_probs(f, protos, has, tiny_clip.logit_scale, mask), 0.7)[0]
    for c in range(4):
        target = FusedTarget(torch.from_numpy(text).float(), torch.from_numpy(protos).float(), torch.from_numpy(has),
                             tiny_clip.logit_scale, 0.7, c, torch.from_numpy(mask))
        assert float(target(emb)) == pytest.approx(expected[c], abs=1e-5)
    cos = CosineTarget(torch.from_numpy(text[1]).float())
    assert float(cos(emb)) == pytest.approx(float(f[0] @ text[1]), abs=1e-5)


def test_three_overlays_with_finite_heatmaps(tiny_clip, setup):
    classes, text, protos, has, image = setup
    exp = explain_image(tiny_clip, image, text, protos, has, 1.0, classes)
    assert set(exp.overlays) == {"text", "aux", "fused"}
    size = tiny_clip.image_size
    for name in ("text", "aux", "fused"):
        assert exp.overlays[name].shape == (size, size, 3) and exp.overlays[name].dtype == np.uint8
        assert np.isfinite(exp.heatmaps[name]).all() and exp.heatmaps[name].shape == (size, size)
        probs = [p for _, p in exp.top5[name]]
        assert probs == sorted(probs, reverse=True) and len(probs) == 4
    assert exp.classes["aux"] != 3, "a class without kept samples cannot be the auxiliary prediction"
    forced = explain_image(tiny_clip, image, text, protos, has, 1.0, classes, target_class=2)
    assert set(forced.classes.values()) == {2}
    assert not tiny_clip.model.visual.conv1.weight.requires_grad, "CAM must leave the model frozen"
