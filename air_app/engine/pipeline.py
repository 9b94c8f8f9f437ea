"""Stage entry points shared by the CLI and the UI: open a workspace with its stored config, run one stage or all."""

from __future__ import annotations

import time
from typing import Any, Callable

from ..config import AirConfig, config_from_dict, load_config, nest_dotted
from ..workspace import Workspace
from . import evaluate as ev
from .context import Context, Hooks, make_context
from .labeling import LabelingResult, pseudolabel
from .setup import init_workspace
from .synth import finetune, select, synthesize


def workspace_config(ws: Workspace, config_path: str | None = None, overrides: dict[str, Any] | None = None
                     ) -> AirConfig:
    """The config stored by `init`, then a YAML file, then command-line overrides; validated."""
    base = AirConfig()
    stored = ws.meta("config")
    if stored:
        config_from_dict(stored, base, strict=False)
    file_cfg = load_config(config_path) if config_path else None
    if file_cfg is not None:
        config_from_dict(file_cfg.to_dict(), base)
    if overrides:
        config_from_dict(nest_dotted(overrides), base)
    base.workspace = str(ws.root)
    return base.validate()


def open_context(workspace: str, config_path: str | None = None, overrides: dict[str, Any] | None = None,
                 hooks: Hooks | None = None) -> Context:
    ws = Workspace.open(workspace)
    cfg = workspace_config(ws, config_path, overrides)
    ws.set_meta("config", cfg.to_dict())
    return make_context(ws, cfg, hooks)


def timed(ctx: Context, name: str, fn: Callable, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(ctx, *args, **kwargs)
    timings = dict(ctx.ws.meta("timings") or {})
    timings[name] = round(time.perf_counter() - t0, 3)
    ctx.ws.set_meta("timings", timings)
    return out


def run_all(cfg: AirConfig, hooks: Hooks | None = None) -> tuple[Context, LabelingResult]:
    """init → finetune → synthesize → select → pseudolabel (→ train and evaluate with a prompt type)."""
    hooks = hooks or Hooks()
    cfg.validate()
    t0 = time.perf_counter()
    ws = init_workspace(cfg, hooks)
    ctx = make_context(ws, cfg, hooks)
    if ctx.models.is_tiny:
        hooks.say("WARNING: " + (ctx.models.banner or ""))
    ws.set_meta("timings", {"init": round(time.perf_counter() - t0, 3)})
    run_id = ws.start_run("run", cfg.to_json())
    try:
        timed(ctx, "finetune", finetune)
        timed(ctx, "synthesize", synthesize)
        timed(ctx, "select", select)
        result = timed(ctx, "pseudolabel", pseudolabel)
        if cfg.train.prompt != "none":
            from .train import train_and_evaluate

            timed(ctx, "train", train_and_evaluate, result)
        ev.update_metrics(ws.path("report", "metrics.json"), {"timings": ws.meta("timings")})
    except BaseException:
        ws.finish_run(run_id, "failed")
        raise
    ws.finish_run(run_id, "done")
    return ctx, result


def train(ctx: Context) -> dict:
    """The `train` stage on its own: pseudo-labels from the current workspace state, then prompt learning."""
    from .labeling import load_labeling_data, write_reports
    from .train import train_and_evaluate

    p = ctx.cfg.pseudolabel
    result = load_labeling_data(ctx).fuse(p.lam, p.rule, p.k_per_class)
    # λ, K or the kept samples may have changed since the last report: describe the pseudo-labels trained on
    write_reports(ctx, result)
    return train_and_evaluate(ctx, result)
