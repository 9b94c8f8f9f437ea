"""Make the bundled demo data: a small labeled image set (4 classes of procedural pictures, a few KB each).

    python assets/make_demo_data.py            # writes assets/demo/images/<class>/*.jpg and assets/demo/classes.txt

Deterministic (seeded), so the committed files can be regenerated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from air_app.data.demo import make_demo_images  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "demo")
    ap.add_argument("--per-class", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"wrote demo images to {make_demo_images(a.out, a.per_class, a.seed)}")
