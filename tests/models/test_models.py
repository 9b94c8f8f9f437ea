"""Real loading code paths, exercised offline: open_clip checkpoints, diffusers save/load, LoRA save/load/resume."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from air_app.config import ModelsConfig
from air_app.errors import UserError
from air_app.models import diffusion as sd
from air_app.models import tiny
from air_app.models.clip import load_clip, parse_clip_spec
from air_app.models.registry import TINY_WARNING, resolve_models


def _pixels(clip, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, clip.image_size, clip.image_size, generator=g)


def test_tiny_clip_loads_through_arch_path_spec(tiny_clip):
    path = tiny.tiny_clip_checkpoint()
    again = load_clip(f"{tiny.TINY_CLIP_ARCH}:{path}", torch.device("cpu"))
    x = _pixels(tiny_clip)
    assert torch.equal(again.encode_images(x), tiny_clip.encode_images(x))
    assert abs(tiny_clip.logit_scale - 100.0) < 1e-3
    feats = tiny_clip.encode_images(x)
    assert feats.shape == (3, 64)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(3))


def test_text_classifier_is_normalised_template_mean(tiny_clip):
    templates = ["a photo of a {}.", "art of the {}."]
    t = tiny_clip.text_classifier(["cat", "dog"], templates)
    single = tiny_clip.encode_texts([tpl.format("dog") for tpl in templates])
    expected = torch.nn.functional.normalize(single.mean(0), dim=0)
    torch.testing.assert_close(t[1], expected)


@pytest.mark.slow
def test_vit_b32_checkpoint_round_trip(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    path = tmp_path / "vitb32.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    clip = load_clip(f"ViT-B-32:{path}", torch.device("cpu"))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
    torch.testing.assert_close(clip.encode_images(x), ref, rtol=0, atol=1e-5)
    assert clip.model_id.startswith("ViT-B-32:file:")


def test_pt_state_dict_loads_with_weights_only_and_pickles_are_refused(tmp_path):
    import open_clip

    tiny.register_tiny_clip_config()
    torch.manual_seed(1)
    model = open_clip.create_model(tiny.TINY_CLIP_ARCH, pretrained=None)
    good = tmp_path / "w.pt"
    torch.save(model.state_dict(), good)
    clip = load_clip(f"{tiny.TINY_CLIP_ARCH}:{good}", torch.device("cpu"))
    assert clip.model.visual.conv1.weight.data_ptr() != model.visual.conv1.weight.data_ptr()
    torch.testing.assert_close(clip.model.visual.conv1.weight, model.visual.conv1.weight)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(UserError, match="cannot load CLIP weights|do not fit"):
        load_clip(f"{tiny.TINY_CLIP_ARCH}:{bad}", torch.device("cpu"))


@pytest.mark.parametrize("spec, message", [
    ("", "empty CLIP spec"),
    ("ViT-B-32", "ARCH:PRETRAINED"),
    ("No-Such-Arch:openai", "unknown CLIP architecture"),
    ("ViT-B-32:not-a-tag", "unknown pretrained tag"),
    ("ViT-B-32:/does/not/exist.safetensors", "does not exist"),
])
def test_bad_clip_specs(spec, message):
    with pytest.raises(UserError, match=message):
        parse_clip_spec(spec)


def test_real_clip_tag_offline_fails_fast_with_instructions():
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        load_clip("ViT-B-32:openai", torch.device("cpu"))


def test_resolve_models_offline():
    assert resolve_models(ModelsConfig(mode="tiny")).is_tiny
    auto = resolve_models(ModelsConfig(mode="auto"))
    assert auto.is_tiny and auto.clip == "tiny" and auto.banner == TINY_WARNING
    with pytest.raises(UserError, match="real weights requested"):
        resolve_models(ModelsConfig(mode="real"))
    local = resolve_models(ModelsConfig(mode="real", clip="tiny", diffusion="tiny"))
    assert local.clip == "tiny"


def test_tiny_pipeline_round_trips_through_save_pretrained(tmp_path, tiny_pipe):
    pipe = tiny.build_tiny_pipeline()
    pipe.save_pretrained(str(tmp_path / "sd"))
    loaded = sd.load_pipeline(str(tmp_path / "sd"), torch.device("cpu"))
    assert loaded.air_kind == "dir"
    a = sd.generate(loaded, ["a photo of a dog"] * 2, [3, 4], steps=3, guidance=7.5, resolution=64)
    b = sd.generate(tiny_pipe, ["a photo of a dog"] * 2, [3, 4], steps=3, guidance=7.5, resolution=64)
    assert [np.asarray(x).tolist() for x in a] == [np.asarray(x).tolist() for x in b]
    assert a[0].size == (64, 64)
    assert np.asarray(a[0]).tolist() != np.asarray(a[1]).tolist()  # distinct seeds, distinct images


def test_generation_is_per_image_seeded(tiny_pipe):
    batch = sd.generate(tiny_pipe, ["x", "y"], [11, 12], steps=3, guidance=7.5, resolution=64)
    single = sd.generate(tiny_pipe, ["y"], [12], steps=3, guidance=7.5, resolution=64)
    diff = np.abs(np.asarray(batch[1], dtype=int) - np.asarray(single[0], dtype=int)).max()
    assert diff <= 1


def test_bad_diffusion_specs(tmp_path):
    with pytest.raises(UserError, match="no model_index.json"):
        sd.load_pipeline(str(tmp_path), torch.device("cpu"))
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        sd.load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", torch.device("cpu"))
    with pytest.raises(UserError, match="neither a folder nor a hub id"):
        sd.load_pipeline("not a spec at all", torch.device("cpu"))


def _train_images():
    from air_app.data.demo import CLASSES, draw

    rng = np.random.default_rng(0)
    return [draw(CLASSES[i % 4], rng) for i in range(6)]


def test_lora_saves_loads_identically_and_leaves_base_untouched(tmp_path, tiny_pipe):
    before = sd.generate(tiny_pipe, ["a photo"], [5], steps=4, guidance=7.5, resolution=64)[0]
    settings = sd.LoraSettings(rank=4, alpha=8, lr=5e-2, steps=6, batch_size=2, resolution=64, checkpoint_every=100)
    path = sd.finetune_lora(tiny_pipe, _train_images(), ["a photo"] * 6, settings, tmp_path / "lora")
    assert path.name == sd.LORA_WEIGHTS and path.is_file()
    after_training = sd.generate(tiny_pipe, ["a photo"], [5], steps=4, guidance=7.5, resolution=64)[0]
    assert np.array_equal(np.asarray(before), np.asarray(after_training)), "the shared pipeline must be restored"

    other = sd.load_pipeline("tiny", torch.device("cpu"))
    sd.load_lora(tiny_pipe, path)
    sd.load_lora(other, path)
    scaling = {m.scaling["air"] for m in tiny_pipe.unet.modules() if hasattr(m, "scaling") and "air" in m.scaling}
    assert scaling == {2.0}, "alpha/rank metadata must survive save and load"
    a = sd.generate(tiny_pipe, ["a photo"], [5], steps=4, guidance=7.5, resolution=64)[0]
    b = sd.generate(other, ["a photo"], [5], steps=4, guidance=7.5, resolution=64)[0]
    sd.unload_lora(tiny_pipe)
    sd.unload_lora(other)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(before))


def test_lora_resume_after_interruption_matches_uninterrupted(tmp_path, tiny_pipe):
    from safetensors.torch import load_file

    images, captions = _train_images(), ["a photo"] * 6
    settings = sd.LoraSettings(rank=4, alpha=4, lr=1e-2, steps=7, batch_size=2, resolution=64, checkpoint_every=2)
    full = load_file(str(sd.finetune_lora(tiny_pipe, images, captions, settings, tmp_path / "full")))

    calls = {"n": 0}

    def stop_after_five():
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(InterruptedError):
        sd.finetune_lora(tiny_pipe, images, captions, settings, tmp_path / "resumed", should_stop=stop_after_five)
    assert (tmp_path / "resumed" / "checkpoint" / "state.json").is_file()
    resumed = load_file(str(sd.finetune_lora(tiny_pipe, images, captions, settings, tmp_path / "resumed")))
    assert not (tmp_path / "resumed" / "checkpoint").exists()
    assert full.keys() == resumed.keys()
    for k in full:
        torch.testing.assert_close(full[k], resumed[k], rtol=0, atol=1e-6)
