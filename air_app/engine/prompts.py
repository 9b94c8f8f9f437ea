"""Prompt learners over a frozen open_clip CLIP (paper §2.1, DESIGN §3 step 7).

- :class:`TextPrompt` — CoOp: t_c = g([SOS], v_1, …, v_M, w(n_c), [EOS]) with M learned context vectors shared by all
  classes (class token at the end), init N(0, std 0.02) or the token embeddings of an init phrase.
- :class:`VisualPrompt` — VPT-shallow: learned prompts P ∈ R^{M×width} inserted after [CLS], after the positional
  embeddings were added (prompts get none), init width^-0.5·N(0,1); output = projected [CLS].

The CLIP model is *not* a registered submodule: ``parameters()`` / ``state_dict()`` hold only the prompt, so an optimiser
over ``module.parameters()`` trains exactly v (or P), and a saved prompt is a few KiB. The CLIP model must already be on
the device the prompt is moved to; it is frozen (``requires_grad_(False)``) by the constructors.

:func:`save_prompt` / :func:`load_prompt` store the prompt tensors as safetensors plus a JSON manifest beside them
(``<path>.json``); :func:`restore_prompt` rebuilds a module from both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..workspace import atomic_write_bytes, atomic_write_text

MANIFEST_VERSION = 1
CTX_INIT_STD = 0.02  # CoOp "VAR_INIT 0.02", used as the std of N(0, ·) as in the base code


def _unwrap(clip_model) -> tuple[nn.Module, Callable | None]:
    """Accept an open_clip ``CLIP`` or an :class:`air_app.models.clip.ClipModel` (which carries its tokenizer)."""
    if hasattr(clip_model, "model") and hasattr(clip_model, "tokenizer") and not isinstance(clip_model, nn.Module):
        return clip_model.model, clip_model.tokenizer
    return clip_model, None


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def _proj(x: torch.Tensor, projection) -> torch.Tensor:
    """Apply a text/visual projection that is an ``nn.Parameter [width, D]``, an ``nn.Linear``, or None."""
    if projection is None:
        return x
    if isinstance(projection, nn.Linear):
        return projection(x)
    return x @ projection


class TextPrompt(nn.Module):
    """CoOp textual prompt: learned context v_1..v_M (``ctx`` [M, width]) right after SOS, class name after them.

    Each class c is tokenised as ``"X X … X {n_c}"`` (M placeholders); the X embeddings are replaced by v, positional
    embeddings are added, the frozen text transformer runs, and the feature is pooled at the EOT position of the
    original token ids (``ids.argmax(-1)`` for CLIP's argmax pooling) and projected. With ``init="a photo of a"`` the
    output equals ``encode_text("a photo of a {n_c}")`` exactly.

    Args:
        clip_model: an open_clip plain ``CLIP`` (text tower on the object itself) or a ``ClipModel``.
        classnames: the C class names n_1..n_C.
        n_ctx: M, the number of context vectors (ignored when ``init`` is a phrase: M = its token count).
        init: ``"random"`` (N(0, 0.02)) or a phrase whose token embeddings initialise v.
        seed: seeds the random init (same seed → identical v); None uses the global torch RNG.
        tokenizer: open_clip tokenizer; defaults to the wrapper's, else ``SimpleTokenizer(model.context_length)``.
    """

    def __init__(self, clip_model, classnames: Sequence[str], n_ctx: int = 16, init: str = "random",
                 seed: int | None = None, tokenizer: Callable | None = None):
        super().__init__()
        model, wrapped_tok = _unwrap(clip_model)
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
            if not hasattr(model, attr):
                raise UserError("textual prompts need a plain open_clip CLIP model (ViT-B-32, ViT-B-16, ViT-L-14, ...); "
                                f"{type(model).__name__} has no text tower attribute {attr!r}")
        if not classnames:
            raise UserError("textual prompt needs at least one class name")
        tokenizer = tokenizer or wrapped_tok
        if tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            tokenizer = SimpleTokenizer(context_length=int(getattr(model, "context_length", 77)))
        model.requires_grad_(False)
        self.__dict__["clip_model"] = model  # unregistered: not in parameters() / state_dict()
        self.classnames = [str(c) for c in classnames]
        self.init = init
        emb_weight = model.token_embedding.weight
        width = int(emb_weight.shape[1])

        if init and init != "random":
            phrase = " ".join(str(init).replace("_", " ").split())
            init_ids = tokenizer([phrase])[0]
            n_init = int(init_ids.argmax(-1)) - 1  # tokens strictly between SOS and EOT
            if n_init < 1:
                raise UserError(f"prompt init phrase {init!r} has no tokens")
            n_ctx = n_init
            with torch.no_grad():
                ctx = model.token_embedding(init_ids[1:1 + n_ctx].to(emb_weight.device)).float().cpu()
        else:
            if n_ctx < 1:
                raise UserError(f"n_ctx must be >= 1, got {n_ctx}")
            ctx = torch.randn(n_ctx, width, generator=_generator(seed)) * CTX_INIT_STD
        self.n_ctx = int(n_ctx)
        self.ctx = nn.Parameter(ctx.to(emb_weight.device))

        placeholder = " ".join(["X"] * self.n_ctx)
        ids = tokenizer([f"{placeholder} {name}" for name in self.classnames]).to(emb_weight.device)
        pool_type = getattr(model, "text_pool_type", "argmax")
        if pool_type == "argmax":
            eot = ids.argmax(dim=-1)
        elif pool_type == "eos":
            eot = (ids == int(model.text_eos_id)).int().argmax(dim=-1)
        elif pool_type == "last":
            eot = torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        else:
            raise UserError(f"textual prompts do not support text pooling {pool_type!r}")
        if int(eot.min()) <= self.n_ctx:
            raise UserError("class names are too long for the text context with this many prompt tokens")
        self.register_buffer("token_ids", ids, persistent=False)  # [C, L]
        self.register_buffer("eot_index", eot, persistent=False)  # [C]

    @property
    def width(self) -> int:
        return int(self.ctx.shape[1])

    @property
    def embed_dim(self) -> int:
        proj = getattr(self.clip_model, "text_projection", None)
        if proj is None:
            return self.width
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[-1])

    def forward(self) -> torch.Tensor:
        """t_c for every class: L2-normalised text features [C, D] (float32)."""
        m = self.clip_model
        cast = m.transformer.get_cast_dtype()
        ids = self.token_ids
        with torch.no_grad():
            emb = m.token_embedding(ids).to(cast)  # [C, L, width]
        # Causal attention: the EOT output depends only on positions <= EOT, so the padding after the longest
        # class prompt is cut away (exact, and ~3x less text-tower work than the full 77-token context).
        length = int(self.eot_index.max()) + 1
        emb = emb[:, :length]
        ctx = self.ctx.to(cast).unsqueeze(0).expand(ids.shape[0], -1, -1)
        x = torch.cat([emb[:, :1], ctx, emb[:, 1 + self.n_ctx:]], dim=1)  # [SOS] v_1..v_M w(n_c) [EOS] …
        x = x + m.positional_embedding[:length].to(cast)
        mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
        x = m.transformer(x, attn_mask=mask)
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), self.eot_index]
        x = _proj(x, getattr(m, "text_projection", None))
        return F.normalize(x.float(), dim=-1)

    def logits(self, image_features: torch.Tensor, logit_scale: float | torch.Tensor) -> torch.Tensor:
        """s · f̄(x)·t_c for normalised image features [B, D] -> logits [B, C] (float32)."""
        return float(logit_scale) * image_features.float() @ self().t()

    def describe(self) -> dict[str, Any]:
        """The manifest fields this prompt determines (type, M, classes, dims)."""
        return {"prompt_type": "text", "n_ctx": self.n_ctx, "classes": list(self.classnames), "width": self.width,
                "embed_dim": self.embed_dim, "init": self.init, "version": MANIFEST_VERSION}


class VisualPrompt(nn.Module):
    """VPT-shallow visual prompt: learned tokens P ([n_tokens, width]) inserted after [CLS] in the frozen ViT.

    Forward (re-implemented from open_clip ``VisionTransformer``): conv1 → flatten → prepend class embedding →
    + positional embedding → patch_dropout → **insert P after CLS** → ln_pre → transformer → ln_post on CLS → @ proj.

    ln_pre is applied *after* the insertion, as in the base protocol (prompts enter the first block through the same
    LayerNorm as the patch tokens). LayerNorm acts per token, so the CLS/patch tokens are unchanged by where P is
    inserted, and with ``n_tokens = 0`` the output equals ``clip_model.encode_image(x)`` exactly.

    Args:
        clip_model: an open_clip ``CLIP`` (or ``ClipModel``) whose ``.visual`` is a ``VisionTransformer``.
        n_tokens: the number of prompt tokens M (0 allowed: then this is plain ``encode_image``).
        seed: seeds the init width^-0.5·N(0,1); None uses the global torch RNG.
    """

    def __init__(self, clip_model, n_tokens: int = 16, seed: int | None = None):
        super().__init__()
        model, _ = _unwrap(clip_model)
        visual = getattr(model, "visual", None)
        for attr in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post"):
            if not hasattr(visual, attr):
                raise UserError("visual prompts need an open_clip ViT image tower (VisionTransformer); "
                                f"{type(visual).__name__} has no {attr!r}")
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
            raise UserError("visual prompts support only ViTs with CLS or average pooling (no attentional pooler)")
        if n_tokens < 0:
            raise UserError(f"n_tokens must be >= 0, got {n_tokens}")
        model.requires_grad_(False)
        self.__dict__["clip_model"] = model
        self.__dict__["visual"] = visual
        self.n_tokens = int(n_tokens)
        width = int(visual.class_embedding.shape[-1])
        init = torch.randn(self.n_tokens, width, generator=_generator(seed)) * width ** -0.5
        self.prompts = nn.Parameter(init.to(visual.class_embedding.device))

    @property
    def width(self) -> int:
        return int(self.prompts.shape[1])

    @property
    def embed_dim(self) -> int:
        proj = getattr(self.visual, "proj", None)
        return self.width if proj is None else int(proj.shape[-1])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed images [B, 3, H, W] -> image features f(x) [B, D] (not normalised, model dtype)."""
        v = self.visual
        x = v.conv1(pixels.to(v.conv1.weight.dtype))  # [B, width, g, g]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, g², width]
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        if self.n_tokens:
            p = self.prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], p, x[:, 1:]], dim=1)  # [CLS] P_1..P_M patches
        x = v.ln_pre(x)
        x = v.transformer(x)
        if getattr(v, "pool_type", "tok") == "avg":  # mean over patch tokens (prompts excluded)
            if getattr(v, "final_ln_after_pool", False):
                pooled = v.ln_post(x[:, 1 + self.n_tokens:].mean(dim=1))
            else:
                pooled = v.ln_post(x)[:, 1 + self.n_tokens:].mean(dim=1)
        else:
            pooled = v.ln_post(x[:, 0])  # LayerNorm is per token: same as ln_post(x)[:, 0]
        return _proj(pooled, getattr(v, "proj", None))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """f̄(x): L2-normalised image features [B, D] (float32)."""
        return F.normalize(self(pixels).float(), dim=-1)

    def logits(self, pixels: torch.Tensor, text_features: torch.Tensor,
               logit_scale: float | torch.Tensor) -> torch.Tensor:
        """s · f̄(x)·t_c with frozen normalised text features [C, D] -> logits [B, C] (float32)."""
        return float(logit_scale) * self.encode(pixels) @ text_features.float().to(pixels.device).t()

    def describe(self) -> dict[str, Any]:
        return {"prompt_type": "visual", "n_tokens": self.n_tokens, "width": self.width, "embed_dim": self.embed_dim,
                "version": MANIFEST_VERSION}


def manifest_path(path: str | Path) -> Path:
    """The JSON manifest that sits beside a prompt file: ``<path>.json``."""
    return Path(str(path) + ".json")


def save_prompt(module: TextPrompt | VisualPrompt, path: str | Path, manifest: dict | None = None) -> Path:
    """Write the prompt tensors (safetensors) and ``<path>.json`` atomically.

    The manifest is ``manifest`` (e.g. ``{"clip_model": clip.model_id, ...}``) updated with the module's own fields
    (prompt_type, n_ctx/n_tokens, classes, width, embed_dim); it must be JSON-serialisable.
    """
    from safetensors.torch import save as st_save

    path = Path(path)
    meta = {**(manifest or {}), **module.describe()}
    text = json.dumps(meta, indent=2, sort_keys=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write_bytes(path, st_save(tensors, metadata={"prompt_type": meta["prompt_type"]}))
    atomic_write_text(manifest_path(path), text + "\n")
    return path


def load_prompt(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a prompt saved by :func:`save_prompt`: (state tensors on CPU, manifest dict)."""
    from safetensors.torch import load_file

    path = Path(path)
    mpath = manifest_path(path)
    if not path.is_file() or not mpath.is_file():
        raise UserError(f"prompt {path} or its manifest {mpath.name} is missing; train the prompt again")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        state = load_file(str(path))
    except Exception as exc:  # truncated / foreign files
        raise UserError(f"cannot read prompt {path}: {str(exc)[:200]}") from None
    return state, manifest


def restore_prompt(clip_model, path: str | Path, tokenizer: Callable | None = None) -> TextPrompt | VisualPrompt:
    """Rebuild a :class:`TextPrompt` or :class:`VisualPrompt` from a saved file and load its tensors."""
    state, manifest = load_prompt(path)
    kind = manifest.get("prompt_type")
    if kind == "text":
        module: TextPrompt | VisualPrompt = TextPrompt(clip_model, manifest["classes"], n_ctx=int(manifest["n_ctx"]),
                                                       tokenizer=tokenizer)
        module.init = manifest.get("init", "random")
    elif kind == "visual":
        module = VisualPrompt(clip_model, n_tokens=int(manifest["n_tokens"]))
    else:
        raise UserError(f"prompt {path} has unknown prompt_type {kind!r}")
    if module.width != int(manifest.get("width", module.width)):
        raise UserError(f"prompt {path} was trained for width {manifest.get('width')}, this CLIP has {module.width}")
    ref = next(iter(module.state_dict().values()))
    module.load_state_dict({k: v.to(ref.device, ref.dtype) for k, v in state.items()})
    return module
