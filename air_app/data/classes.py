"""Class names: from a file (one per line, UTF-8), a list, or a benchmark preset; validated; matched to folders."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import UserError


def normalise_name(name: str) -> str:
    """Comparison key for matching folder names to class names: case, '_'/'-' and spacing do not matter."""
    s = unicodedata.normalize("NFKC", name).casefold()
    return re.sub(r"[\s_\-]+", " ", s).strip()


def validate_classes(names: Iterable[str], source: str = "class list") -> list[str]:
    """Strip names; reject empty lists, a single class, blank names and duplicates (after normalisation)."""
    cleaned = [" ".join(str(n).split()) for n in names]
    if not cleaned:
        raise UserError(f"{source} is empty: give at least two class names, one per line")
    blanks = [i + 1 for i, n in enumerate(cleaned) if not n]
    if blanks:
        raise UserError(f"{source} has blank class names (entries {', '.join(map(str, blanks[:5]))}); remove them")
    if len(cleaned) < 2:
        raise UserError(f"{source} has only one class ({cleaned[0]!r}); classification needs at least two")
    seen: dict[str, str] = {}
    for n in cleaned:
        key = normalise_name(n)
        if key in seen:
            raise UserError(f"{source} lists the class {n!r} twice (also as {seen[key]!r}); class names must be unique")
        seen[key] = n
    return cleaned


def read_classes_file(path: str | Path) -> list[str]:
    """One class name per line; blank lines at the end and lines starting with '#' are ignored."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"classes file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"classes file {p} is not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if not line.startswith("#")]  # before trimming: a comment may end the file
    while lines and not lines[-1]:
        lines.pop()
    if not any(lines):
        raise UserError(f"classes file {p} is empty: write one class name per line")
    return validate_classes(lines, f"classes file {p}")


def match_folders(folder_labels: Sequence[str], classes: Sequence[str]) -> dict[str, int]:
    """Map each ImageFolder sub-folder to a class index; folders naming no class are an error."""
    index = {normalise_name(c): i for i, c in enumerate(classes)}
    mapping, unknown = {}, []
    for label in folder_labels:
        key = normalise_name(label)
        if key in index:
            mapping[label] = index[key]
        else:
            unknown.append(label)
    if unknown:
        raise UserError(
            f"image folders {', '.join(repr(u) for u in unknown[:5])}{'...' if len(unknown) > 5 else ''} match no "
            f"class name; rename them or add the classes (known: {', '.join(classes[:5])}{'...' if len(classes) > 5 else ''})")
    return mapping
