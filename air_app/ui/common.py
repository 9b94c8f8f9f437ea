"""Shared pieces of the web app: error display, allowed-root checks, uploads, the models banner, formatting."""

from __future__ import annotations

import functools
import inspect
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gradio as gr

from ..data.images import IMAGE_SUFFIXES
from ..errors import UserError
from ..models.registry import TINY_WARNING


@dataclass
class AppOptions:
    """Server-side settings of the app (from app.py's command line)."""

    root: Path  # server folders (images, workspaces) must be inside one of the allowed roots
    default_workspace: str | None = None
    extra_roots: list[Path] = field(default_factory=list)

    # What Gradio may serve: the assets, plus each workspace opened in this process and its image folders. The
    # same list object is given to launch(allowed_paths=...), so folders added here are served from then on.
    served: list[str] = field(default_factory=list)

    @property
    def allowed_roots(self) -> list[Path]:
        return [self.root.resolve(), *[r.resolve() for r in self.extra_roots]]

    def serve(self, workspace: str, config: dict | None = None) -> None:
        """Allow serving a workspace's files and the image folders it indexes (nothing else of the root)."""
        data = (config or {}).get("data") or {}
        for folder in (workspace, data.get("images"), data.get("test_images")):
            if folder:
                path = str(Path(folder).expanduser().resolve())
                if path not in self.served:
                    self.served.append(path)


def user_errors(fn: Callable) -> Callable:
    """Turn UserError into a visible gr.Error (a message in the page); works for plain and generator handlers.
    User mistakes are expected, so they leave no traceback in the server log (bugs still do)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except UserError as exc:
                raise gr.Error(str(exc), duration=None, print_exception=False) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise gr.Error(str(exc), duration=None, print_exception=False) from None

    return wrapper


def resolve_under(options: AppOptions, path: str, what: str) -> Path:
    """A server path, which must lie inside an allowed root."""
    if not path or not str(path).strip():
        raise UserError(f"enter a {what}")
    p = Path(str(path).strip()).expanduser()
    if not p.is_absolute():
        p = options.root / p
    p = p.resolve()
    for root in options.allowed_roots:
        if p == root or root in p.parents:
            return p
    raise UserError(f"{what} {p} is outside the allowed folder {options.root}; use a folder inside it")


def require_workspace(ws: str | None) -> str:
    if not ws:
        raise UserError("no workspace is open: create or open one in the Setup tab")
    return ws


def banner_html(status: dict | None) -> str:
    """The models banner: unmistakable when the offline tiny models are in use."""
    if not status:
        return "<div class='air-banner air-none'>No workspace open — start in the <b>Setup</b> tab.</div>"
    models = status.get("models") or {}
    if status.get("is_tiny"):
        return f"<div class='air-banner air-tiny' id='tiny-banner'>⚠ {TINY_WARNING}</div>"
    return (f"<div class='air-banner air-real'>Models: CLIP <code>{models.get('clip')}</code> · Stable Diffusion "
            f"<code>{models.get('diffusion')}</code> · {models.get('device')}</div>")


def pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def extract_uploads(files: list[str] | None, dest: Path) -> Path:
    """Copy uploaded images (and the contents of uploaded zips) into `dest`. A zip keeps its folder structure (so an
    uploaded ImageFolder keeps its labels); entries escaping the folder are refused before anything is written."""
    if not files:
        raise UserError("no files uploaded")
    images, zips, rejected = [], [], []
    for f in files:
        p = Path(f)
        if p.suffix.lower() == ".zip":
            zips.append(p)
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
        else:
            rejected.append(p.name)
    if rejected:
        raise UserError(f"not an image or a zip: {', '.join(rejected[:5])}; upload .jpg/.png/... files or a .zip")
    for z in zips:
        try:
            with zipfile.ZipFile(z) as zf:
                for name in zf.namelist():
                    parts = Path(name).parts
                    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                        raise UserError(f"zip {z.name} has an entry '{name}' that escapes its folder; nothing was "
                                        "extracted")
        except zipfile.BadZipFile:
            raise UserError(f"{z.name} is not a valid zip file") from None
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for p in images:
        shutil.copy2(p, tmp / p.name)
    for z in zips:
        with zipfile.ZipFile(z) as zf:
            for info in zf.infolist():
                if info.is_dir() or Path(info.filename).name.startswith(".") or "__MACOSX" in info.filename:
                    continue
                target = tmp / info.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


CSS = """
.air-banner {padding: 10px 14px; border-radius: 8px; font-weight: 600; margin-bottom: 6px;}
.air-tiny {background: #fff3cd; color: #7a4d00; border: 2px solid #e0a800;}
.air-real {background: #e8f5e9; color: #1b5e20; border: 1px solid #a5d6a7;}
.air-none {background: #eef2f7; color: #34495e; border: 1px solid #cfd8e3;}
"""
