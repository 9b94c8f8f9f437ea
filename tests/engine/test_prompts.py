"""CoOp TextPrompt and VPT-shallow VisualPrompt over the tiny offline CLIP (and one ViT-B-32 shape check)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from air_app.engine.prompts import (TextPrompt, VisualPrompt, load_prompt, manifest_path, restore_prompt,
                                    save_prompt)

CLASSES = ["cat", "golden retriever", "sunflower", "airplane"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The tiny CLIP from the registry, built in a private cache folder."""
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "AIR_APP_CACHE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["AIR_APP_CACHE"] = os.environ.get("AIR_APP_CACHE") or str(tmp_path_factory.mktemp("aircache"))
    from air_app.models import tiny
    from air_app.models.registry import REGISTRY

    tiny.register_tiny_clip_config()  # load_clip("tiny") skips this when the checkpoint is already cached
    yield REGISTRY.clip("tiny", "cpu")
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _pixels(clip, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, clip.image_size, clip.image_size, generator=g)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- TextPrompt (CoOp) -----------------------------------------------------------------------------------------------

def test_text_prompt_with_phrase_init_reproduces_encode_text(clip):
    tp = TextPrompt(clip.model, CLASSES, init="a photo of a", tokenizer=clip.tokenizer)
    assert tp.n_ctx == 4 and tuple(tp.ctx.shape) == (4, tp.width)
    with torch.no_grad():
        ref = F.normalize(clip.model.encode_text(clip.tokenizer([f"a photo of a {c}" for c in CLASSES])).float(), dim=-1)
        out = tp()
    assert out.shape == (len(CLASSES), clip.embed_dim)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(len(CLASSES)))
    # the ClipModel wrapper works too and brings its own tokenizer
    with torch.no_grad():
        torch.testing.assert_close(TextPrompt(clip, CLASSES, init="a photo of a")(), ref, atol=1e-5, rtol=0)


def test_text_prompt_random_init_shape_seed_and_grad(clip):
    a = TextPrompt(clip, CLASSES, n_ctx=16, seed=7)
    b = TextPrompt(clip, CLASSES, n_ctx=16, seed=7)
    c = TextPrompt(clip, CLASSES, n_ctx=16, seed=8)
    assert tuple(a.ctx.shape) == (16, a.width)
    assert torch.equal(a.ctx, b.ctx) and not torch.equal(a.ctx, c.ctx)
    assert abs(a.ctx.std().item() - 0.02) < 0.004 and abs(a.ctx.mean().item()) < 0.004
    assert [n for n, p in a.named_parameters() if p.requires_grad] == ["ctx"]
    assert not any(p.requires_grad for p in clip.model.parameters())
    assert list(a.state_dict()) == ["ctx"]  # CLIP weights are not part of the prompt
    # the context v_1..v_M sits right after SOS: ids[:, 1:17] are the "X" placeholders, the class follows
    assert (a.token_ids[:, 1:17] == a.token_ids[0, 1]).all() and (a.eot_index > 17).all()
    logits = a.logits(clip.encode_images(_pixels(clip, 3)), clip.logit_scale)
    assert logits.shape == (3, len(CLASSES))
    logits.sum().backward()
    assert a.ctx.grad is not None and a.ctx.grad.abs().sum() > 0


def test_text_prompt_training_reduces_loss_and_keeps_clip_frozen(clip):
    """Image features drawn around a teacher prompt's text features; a randomly initialised student learns them."""
    with torch.no_grad():
        teacher = TextPrompt(clip, CLASSES, n_ctx=4, seed=105)()
    g = torch.Generator().manual_seed(5)
    y = torch.arange(len(CLASSES)).repeat_interleave(8)
    feats = F.normalize(teacher[y] + 0.02 * torch.randn(len(y), teacher.shape[1], generator=g), dim=-1)
    student = TextPrompt(clip, CLASSES, n_ctx=4, seed=5)
    before = _snapshot(clip.model)
    ctx0 = student.ctx.detach().clone()
    opt = torch.optim.SGD(student.parameters(), lr=0.002, momentum=0.9)
    history = []
    for _ in range(30):
        logits = student.logits(feats, clip.logit_scale)
        loss = F.cross_entropy(logits, y)
        history.append((loss.item(), (logits.argmax(1) == y).float().mean().item()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    (loss0, acc0), (loss1, acc1) = history[0], history[-1]
    assert loss1 < 0.5 * loss0
    assert acc1 > acc0 and acc1 >= 0.9
    assert not torch.equal(student.ctx, ctx0)
    after = clip.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


# --- VisualPrompt (VPT-shallow) ---------------------------------------------------------------------------------------

def test_visual_prompt_zero_tokens_equals_encode_image(clip):
    vp = VisualPrompt(clip, n_tokens=0)
    px = _pixels(clip, 4)
    with torch.no_grad():
        ref = clip.model.encode_image(px)
        torch.testing.assert_close(vp(px), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(vp.encode(px), clip.encode_images(px), atol=1e-5, rtol=0)
    assert list(vp.state_dict()) == ["prompts"] and vp.prompts.numel() == 0


def test_visual_prompt_changes_output_and_grads_reach_only_the_prompt(clip):
    vp = VisualPrompt(clip, n_tokens=16, seed=3)
    assert tuple(vp.prompts.shape) == (16, vp.width)
    assert abs(vp.prompts.std().item() - vp.width ** -0.5) < 0.3 * vp.width ** -0.5
    assert torch.equal(vp.prompts, VisualPrompt(clip, n_tokens=16, seed=3).prompts)
    px = _pixels(clip, 4)
    with torch.no_grad():
        ref = clip.model.encode_image(px)
    out = vp(px)
    assert out.shape == ref.shape == (4, clip.embed_dim)
    assert (out - ref).abs().max() > 1e-3
    assert [n for n, p in vp.named_parameters() if p.requires_grad] == ["prompts"]
    out.pow(2).sum().backward()
    assert vp.prompts.grad is not None and vp.prompts.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.model.parameters())


def test_visual_prompt_training_reduces_loss_with_frozen_text_features(clip):
    """Two classes of noisy pixel patterns, frozen zero-shot text features, SGD on P only."""
    text = clip.text_classifier(CLASSES[:2], ["a photo of a {}."])
    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(2, 3, clip.image_size, clip.image_size, generator=g)
    y = torch.arange(2).repeat_interleave(4)
    px = patterns[y] + 0.1 * torch.randn(len(y), *patterns.shape[1:], generator=g)
    vp = VisualPrompt(clip, n_tokens=16, seed=0)
    before = _snapshot(clip.model)
    opt = torch.optim.SGD(vp.parameters(), lr=1.0, momentum=0.9)
    history = []
    for _ in range(40):
        logits = vp.logits(px, text, clip.logit_scale)
        loss = F.cross_entropy(logits, y)
        history.append((loss.item(), (logits.argmax(1) == y).float().mean().item()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    (loss0, acc0), (loss1, acc1) = history[0], history[-1]
    assert loss1 < loss0 - 0.05
    assert acc1 > acc0 and acc1 == 1.0
    after = clip.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


# --- save / load ------------------------------------------------------------------------------------------------------

def test_save_load_round_trip(clip, tmp_path):
    tp = TextPrompt(clip, CLASSES, n_ctx=8, seed=5)
    path = save_prompt(tp, tmp_path / "prompts" / "text.safetensors", {"clip_model": clip.model_id, "epochs": 3})
    assert path.is_file() and manifest_path(path).is_file()
    state, manifest = load_prompt(path)
    assert list(state) == ["ctx"] and torch.equal(state["ctx"], tp.ctx.detach())
    assert manifest["prompt_type"] == "text" and manifest["n_ctx"] == 8 and manifest["classes"] == CLASSES
    assert manifest["clip_model"] == clip.model_id and manifest["epochs"] == 3
    assert manifest["width"] == tp.width and manifest["embed_dim"] == clip.embed_dim
    assert json.loads(manifest_path(path).read_text()) == manifest
    restored = restore_prompt(clip, path)
    assert isinstance(restored, TextPrompt) and torch.equal(restored.ctx, tp.ctx)
    with torch.no_grad():
        assert torch.equal(restored(), tp())

    vp = VisualPrompt(clip, n_tokens=16, seed=9)
    vpath = save_prompt(vp, tmp_path / "visual.safetensors", {"clip_model": clip.model_id})
    vstate, vmanifest = load_prompt(vpath)
    assert torch.equal(vstate["prompts"], vp.prompts.detach())
    assert vmanifest["prompt_type"] == "visual" and vmanifest["n_tokens"] == 16
    assert vmanifest["embed_dim"] == clip.embed_dim and vmanifest["width"] == vp.width
    vrestored = restore_prompt(clip, vpath)
    assert isinstance(vrestored, VisualPrompt) and torch.equal(vrestored.prompts, vp.prompts)
    assert not list(tmp_path.rglob("*.tmp"))


def test_load_missing_prompt_is_a_user_error(tmp_path):
    from air_app.errors import UserError

    with pytest.raises(UserError):
        load_prompt(tmp_path / "nope.safetensors")


# --- a real architecture ----------------------------------------------------------------------------------------------

def test_vit_b32_shapes_and_zero_token_equality():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    tok = open_clip.get_tokenizer("ViT-B-32")
    px = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model.encode_image(px)
        torch.testing.assert_close(VisualPrompt(model, n_tokens=0)(px), ref, atol=1e-5, rtol=0)
        vp = VisualPrompt(model, n_tokens=16, seed=0)
        assert tuple(vp.prompts.shape) == (16, 768) and vp(px[:1]).shape == (1, 512)
        assert tuple(TextPrompt(model, ["cat", "dog"], n_ctx=16, seed=0).ctx.shape) == (16, 512)
        phrase = TextPrompt(model, ["cat", "dog"], init="a photo of a", tokenizer=tok)
        want = F.normalize(model.encode_text(tok(["a photo of a cat", "a photo of a dog"])), dim=-1)
        torch.testing.assert_close(phrase(), want, atol=1e-5, rtol=0)
