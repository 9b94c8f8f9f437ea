"""`python -m air_app report`: a markdown table of runs (dataset × paradigm × prompt type) with the base protocol's
published numbers beside ours.

Published figures: Menghini et al., NeurIPS 2023 ("Enhancing CLIP with CLIP"), ViT-B/32, means over seeds, as listed
in their repository's README (TRZSL = harmonic mean of seen and unseen accuracy). AiR's own tables could not be read
(see shared/reference/paper.md §5), so only zero-shot CLIP and GRIP are given.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError

# dataset -> paradigm -> value, in percent
PUBLISHED_CLIP = {
    "flowers102": {"ssl": 63.7, "ul": 63.7, "trzsl": 63.4}, "resisc45": {"ssl": 54.5, "ul": 54.5, "trzsl": 54.5},
    "fgvcaircraft": {"ssl": 17.6, "ul": 17.6, "trzsl": 17.9}, "eurosat": {"ssl": 32.9, "ul": 32.9, "trzsl": 30.5},
    "dtd": {"ssl": 43.2, "ul": 43.2, "trzsl": 43.4},
}
PUBLISHED_GRIP = {
    "textual": {
        "flowers102": {"ssl": 83.6, "ul": 69.8, "trzsl": 86.3}, "resisc45": {"ssl": 74.1, "ul": 70.6, "trzsl": 81.1},
        "fgvcaircraft": {"ssl": 17.0, "ul": 15.2, "trzsl": 26.1}, "eurosat": {"ssl": 58.7, "ul": 57.2, "trzsl": 92.3},
        "dtd": {"ssl": 56.1, "ul": 46.1, "trzsl": 65.3},
    },
    "visual": {
        "flowers102": {"ssl": 67.9, "ul": 63.1, "trzsl": 77.2}, "resisc45": {"ssl": 71.2, "ul": 68.4, "trzsl": 82.2},
        "fgvcaircraft": {"ssl": 19.4, "ul": 17.5, "trzsl": 26.4}, "eurosat": {"ssl": 63.5, "ul": 63.7, "trzsl": 97.0},
        "dtd": {"ssl": 54.6, "ul": 50.5, "trzsl": 62.8},
    },
}


def read_runs(sources: list[str | Path]) -> list[dict]:
    """Runs from runs.jsonl files, or from workspaces' report/runs.jsonl."""
    runs = []
    for src in sources:
        path = Path(src)
        if path.is_dir():
            path = path / "report" / "runs.jsonl"
        if not path.is_file():
            raise UserError(f"no runs at {path}: train prompts first (`train` or `run --prompt textual`)")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    runs.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(f"{path} line {n} is not JSON") from None
    return runs


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def render_report(sources: list[str | Path]) -> str:
    """Group runs by (dataset, paradigm, prompt); mean over seeds; published numbers beside."""
    runs = read_runs(sources)
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        cfg = r.get("config", {})
        dataset = (r.get("preset") or cfg.get("data", {}).get("preset") or Path(r.get("workspace", "?")).name).lower()
        key = (dataset, r.get("paradigm", "?"), cfg.get("train", {}).get("prompt", "?"), cfg.get("pseudolabel", {})
               .get("rule", "?"))
        groups.setdefault(key, []).append(r)
    lines = ["| dataset | paradigm | prompt | rule | runs | zero-shot (ours) | AiR (ours) | CLIP (published) | "
             "GRIP (published) | models |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (dataset, paradigm, prompt, rule), rs in sorted(groups.items()):
        def mean(getter):
            vals = [v for v in (getter(r) for r in rs) if v is not None]
            return sum(vals) / len(vals) if vals else None

        metric = "harmonic_mean" if paradigm == "trzsl" else "accuracy"
        zs_metric = "zero_shot_harmonic_mean" if paradigm == "trzsl" else "zero_shot_accuracy"
        ours = mean(lambda r: r.get("final", {}).get(metric))
        zs = mean(lambda r: r.get("final", {}).get(zs_metric, r.get("zero_shot_accuracy")))
        clip = PUBLISHED_CLIP.get(dataset, {}).get(paradigm)
        grip = PUBLISHED_GRIP.get(prompt, {}).get(dataset, {}).get(paradigm)
        tiny = any((r.get("models") or {}).get("is_tiny") for r in rs)
        lines.append(f"| {dataset} | {paradigm.upper()} | {prompt} | {rule} | {len(rs)} | {_pct(zs)} | {_pct(ours)} | "
                     f"{'–' if clip is None else clip} | {'–' if grip is None else grip} | "
                     f"{'tiny (meaningless)' if tiny else 'real'} |")
    lines.append("")
    lines.append("TRZSL rows report the harmonic mean of seen and unseen accuracy. Published numbers: Menghini et al., "
                 "NeurIPS 2023, ViT-B/32.")
    return "\n".join(lines)
