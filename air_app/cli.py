"""`python -m air_app <command>`: the headless engine. Each command is one stage (or all of them, `run`).

Bad input prints one line on stderr and exits with code 2; the workspace is left as it was.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from .errors import UserError

# command-line flag -> dotted config key
OVERRIDES: list[tuple[str, str, type, str]] = [
    ("--images", "data.images", str, "ImageFolder tree (<dir>/<class>/*) or a flat folder of unlabeled images"),
    ("--test-images", "data.test_images", str, "separate test folder (default: a seeded holdout when labeled)"),
    ("--test-fraction", "data.test_fraction", float, "holdout fraction per class when no test folder [0.2]"),
    ("--classes", "data.classes_file", str, "class names file, one per line (UTF-8)"),
    ("--preset", "data.preset", str, "benchmark preset: flowers102, resisc45, dtd, eurosat, fgvcaircraft"),
    ("--data-root", "data.data_root", str, "with --preset: folder holding <preset>/train and <preset>/test"),
    ("--template-style", "data.template_style", str, "dataset (per-dataset ensemble) or base ('a photo of a {}')"),
    ("--domain-caption", "data.domain_caption", str, "class-free LoRA caption (default: the preset's)"),
    ("--paradigm", "data.paradigm", str, "ul | ssl | trzsl"),
    ("--labeled-per-class", "data.labeled_per_class", int, "SSL: labeled images per class [2]"),
    ("--seen-fraction", "data.seen_fraction", float, "TRZSL: fraction of seen classes [0.62]"),
    ("--models", "models.mode", str, "auto | tiny | real [auto]"),
    ("--clip", "models.clip", str, "CLIP spec ARCH:PRETRAINED or ARCH:/path/weights.safetensors or tiny"),
    ("--diffusion", "models.diffusion", str, "Stable Diffusion hub id, local folder, or tiny"),
    ("--device", "models.device", str, "auto | cpu | cuda | cuda:N"),
    ("--lora-steps", "finetune.steps", int, "LoRA fine-tuning steps [1000]"),
    ("--lora-rank", "finetune.rank", int, "LoRA rank [8]"),
    ("--lora-batch", "finetune.batch_size", int, "LoRA batch size [4]"),
    ("--captions", "finetune.captions", str, "LoRA captions: domain | pseudo"),
    ("--synthetic-per-class", "synthesis.per_class", int, "M, images generated per class [64]"),
    ("--keep", "synthesis.keep", int, "K, representative samples kept per class [ceil(M/2)]"),
    ("--gen-steps", "synthesis.steps", int, "denoising steps [25]"),
    ("--guidance", "synthesis.guidance", float, "classifier-free guidance [7.5]"),
    ("--gen-batch", "synthesis.batch_size", int, "generation batch size [8]"),
    ("--resolution", "synthesis.resolution", int, "generation size in px (default: the model's native size)"),
    ("--lam", "pseudolabel.lam", float, "λ, weight of the auxiliary classifier in the fusion [1.0]"),
    ("--rule", "pseudolabel.rule", str, "pseudo-label selection: topk | grip | fixed | all"),
    ("--k-per-class", "pseudolabel.k_per_class", int, "pseudo-labels per class for topk [16]"),
    ("--prompt", "train.prompt", str, "prompt learning: none | textual | visual"),
    ("--epochs", "train.epochs", int, "prompt-learning epochs"),
    ("--lr", "train.lr", float, "prompt-learning learning rate [0.1]"),
    ("--beta", "train.beta", float, "β, weight of the synthetic-image loss [1.0]"),
    ("--seed", "seed", int, "random seed [0]"),
]

STAGE_HELP = {
    "init": "create a workspace and index classes and images",
    "finetune": "LoRA-fine-tune Stable Diffusion on the images",
    "synthesize": "generate M synthetic images per class (resumable)",
    "select": "score synthetic samples and keep the K most representative per class",
    "pseudolabel": "fuse text and auxiliary classifiers and select pseudo-labels; writes the report",
    "train": "learn textual (CoOp) or visual (VPT) prompts on the pseudo-labels and synthetic images",
    "evaluate": "print metrics and per-class accuracy; refresh confusion matrices",
    "explain": "Grad-CAM overlays (text, auxiliary, fused) for one image",
    "run": "all stages in order",
    "bench": "benchmarks: pseudolabel | train",
    "download": "download a benchmark with torchvision into --data-root (needs network)",
    "report": "markdown table of runs (dataset x paradigm x prompt) beside the published numbers",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        sys.stderr.write(f"error: {message} (see --help)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--workspace", "-w", help="workspace folder")
    common.add_argument("--config", help="YAML config file (sections models, data, finetune, synthesis, ...)")
    common.add_argument("--no-finetune", action="store_true", help="skip LoRA fine-tuning (use the base model)")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    common.add_argument("--fresh", action="store_true", help="train: discard an unfinished run's checkpoint")
    for flag, key, tp, help_text in OVERRIDES:
        common.add_argument(flag, dest=key, type=str, default=None, metavar=tp.__name__.upper(), help=help_text)
    parser = _Parser(prog="python -m air_app", description="AiR Studio engine: adapt CLIP to a new image domain "
                     "without labels, with diffusion-generated images (AiR, CVPR 2025).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help_text in STAGE_HELP.items():
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        if name == "synthesize":
            p.add_argument("--regenerate", action="store_true", help="delete existing samples first")
            p.add_argument("--class", dest="only_class", help="only this class")
        if name == "explain":
            p.add_argument("--image", required=True, help="image path, or its row number in predictions.csv")
            p.add_argument("--class", dest="target_class", help="explain this class (default: each prediction)")
            p.add_argument("--out", help="output folder (default: <workspace>/report/explain)")
        if name == "bench":
            p.add_argument("what", choices=["pseudolabel", "train"])
            p.add_argument("--images-n", type=int, default=10_000)
            p.add_argument("--classes-n", type=int, default=102)
            p.add_argument("--arch", default="ViT-B-32")
        if name == "download":
            p.add_argument("name", help="benchmark preset")
        if name == "report":
            p.add_argument("runs", nargs="*", help="runs.jsonl files or workspaces (default: --workspace)")
            p.add_argument("--out", help="write the markdown here too")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = {key: getattr(args, key) for _, key, _, _ in OVERRIDES if getattr(args, key, None) is not None}
    if args.no_finetune:
        out["finetune.enabled"] = False
    if args.fresh:
        out["train.resume"] = False
    return out


def _hooks(quiet: bool):
    from .engine.context import Hooks

    bars: dict[str, Any] = {}

    def progress(what: str, done: int, total: int) -> None:
        if quiet:
            return
        from tqdm import tqdm

        bar = bars.get(what)
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = bars[what] = tqdm(total=total, desc=what, leave=False, file=sys.stderr, dynamic_ncols=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            bars.pop(what, None)

    return Hooks(say=lambda msg: print(msg, flush=True), progress=progress)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*upcast_vae.*")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("diffusers", "transformers", "huggingface_hub", "peft", "open_clip", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import diffusers.utils.logging as dl
        import transformers.utils.logging as tl

        dl.disable_progress_bar()
        dl.set_verbosity_error()
        tl.disable_progress_bar()
        tl.set_verbosity_error()
    except ImportError:
        pass


def _require_workspace(args) -> str:
    if not args.workspace:
        raise UserError("pass --workspace DIR")
    return args.workspace


def _cmd(args: argparse.Namespace) -> int:
    from .engine import pipeline

    hooks = _hooks(args.quiet)
    overrides = _overrides(args)
    cmd = args.command
    if cmd == "download":
        from .data.benchmarks import download_benchmark

        root = overrides.get("data.data_root") or "data"
        print(f"downloaded {args.name} to {download_benchmark(args.name, root)}")
        return 0
    if cmd == "bench":
        from . import bench

        return bench.main(args.what, args)
    if cmd == "report":
        from .runs_report import render_report

        sources = args.runs or ([args.workspace] if args.workspace else [])
        if not sources:
            raise UserError("pass runs.jsonl files or workspaces, or --workspace DIR")
        text = render_report(sources)
        print(text)
        if args.out:
            from .workspace import atomic_write_text

            atomic_write_text(args.out, text)
        return 0
    if cmd in ("init", "run"):
        from .config import load_config

        if args.workspace:
            overrides["workspace"] = args.workspace
        cfg = load_config(args.config, overrides)
        if not cfg.workspace:
            raise UserError("pass --workspace DIR")
        if cmd == "init":
            from .engine.setup import init_workspace

            ws = init_workspace(cfg, hooks)
            print(f"workspace ready: {ws.root}")
            return 0
        ctx, _ = pipeline.run_all(cfg, hooks)
        _print_report(ctx)
        return 0
    ctx = pipeline.open_context(_require_workspace(args), args.config, overrides, hooks)
    if ctx.models.is_tiny:
        hooks.say("WARNING: " + (ctx.models.banner or ""))
    if cmd == "finetune":
        pipeline.timed(ctx, "finetune", pipeline.finetune)
    elif cmd == "synthesize":
        only = None
        if args.only_class:
            names = ctx.classes
            if args.only_class not in names:
                raise UserError(f"unknown class {args.only_class!r}")
            only = [names.index(args.only_class)]
        if args.regenerate:
            n = sum(ctx.ws.delete_synthetic(c) for c in only) if only else ctx.ws.delete_synthetic()
            hooks.say(f"synthesize: removed {n} existing samples")
        pipeline.timed(ctx, "synthesize", pipeline.synthesize, only)
    elif cmd == "select":
        pipeline.select(ctx)
    elif cmd == "pseudolabel":
        pipeline.timed(ctx, "pseudolabel", pipeline.pseudolabel)
        _print_report(ctx)
    elif cmd == "train":
        pipeline.timed(ctx, "train", pipeline.train)
        _print_report(ctx)
    elif cmd == "evaluate":
        from .engine.report import print_evaluation

        print_evaluation(ctx)
    elif cmd == "explain":
        from .engine.report import explain_to_files

        explain_to_files(ctx, args.image, args.target_class, args.out)
    return 0


def _print_report(ctx) -> None:
    print(f"report: {ctx.ws.path('report')} (metrics.json, predictions.csv, probs.npz, confusion_*.png)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return _cmd(args)
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except (KeyboardInterrupt, InterruptedError):
        sys.stderr.write("interrupted: the workspace is consistent; run the same command again to resume\n")
        return 130
