"""On-disk project state: a SQLite index (WAL) beside the files it describes, plus a feature cache.

Layout (DESIGN §4)::

    workspace.db               images, classes, synthetic samples, stage fingerprints, runs
    synthetic/<class>/<id>.png generated images
    cache/<model key>/*.safetensors   CLIP features keyed by image content hash
    lora/  prompts/  report/

Every file is written to a temporary name and renamed into place, and every index change is a transaction, so a
process killed at any moment leaves a workspace that opens and resumes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .errors import UserError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS classes (idx INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, seen INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, sha TEXT NOT NULL, gt INTEGER,
    split TEXT NOT NULL DEFAULT 'train', labeled INTEGER NOT NULL DEFAULT 0, usable INTEGER NOT NULL DEFAULT 1,
    problem TEXT);
CREATE TABLE IF NOT EXISTS synthetic (
    id INTEGER PRIMARY KEY, class_idx INTEGER NOT NULL, idx INTEGER NOT NULL, seed INTEGER NOT NULL,
    prompt TEXT NOT NULL, path TEXT NOT NULL, sha TEXT NOT NULL, score REAL, auto_keep INTEGER,
    manual_keep INTEGER, created REAL NOT NULL, UNIQUE(class_idx, idx));
CREATE TABLE IF NOT EXISTS stages (name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, finished REAL NOT NULL,
    info TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, command TEXT NOT NULL, started REAL NOT NULL,
    finished REAL, status TEXT NOT NULL, config TEXT NOT NULL DEFAULT '{}');
"""


# ------------------------------------------------------------------------------------------------ atomic writes
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_image(path: str | Path, image) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def slug(name: str) -> str:
    """A file-system-safe folder name for a class name (stable, readable, unique enough with the index)."""
    s = re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()
    return s[:60] or "class"


# ---------------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: str
    sha: str
    gt: int | None
    split: str
    labeled: bool


@dataclass(frozen=True)
class SyntheticRecord:
    id: int
    class_idx: int
    idx: int
    seed: int
    prompt: str
    path: str
    sha: str
    score: float | None
    auto_keep: bool | None
    manual_keep: bool | None

    @property
    def kept(self) -> bool:
        """A manual keep/prune decision overrides the automatic choice."""
        if self.manual_keep is not None:
            return self.manual_keep
        return bool(self.auto_keep)


# ----------------------------------------------------------------------------------------------- feature cache
class FeatureCache:
    """CLIP features keyed by (model id, image content hash), stored as safetensors shards.

    Each `put` writes one new shard atomically: {"features": [N, D] float32} with the hashes in the metadata.
    Shards are read once and held in memory, so lookups after the first are dictionary hits.
    """

    MAX_SHARDS = 32

    def __init__(self, root: Path, model_id: str):
        self.model_id = model_id
        key = hashlib.sha256(model_id.encode()).hexdigest()[:16]
        self.dir = root / key
        self._lock = threading.Lock()
        self._rows: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._rows is None:
            from safetensors import safe_open

            rows: dict[str, np.ndarray] = {}
            for shard in sorted(self.dir.glob("features-*.safetensors")):
                try:
                    with safe_open(str(shard), framework="np") as fh:
                        meta = fh.metadata() or {}
                        hashes = json.loads(meta.get("hashes", "[]"))
                        feats = fh.get_tensor("features")
                except Exception:  # a damaged shard is ignored: its features are simply recomputed
                    continue
                for h, row in zip(hashes, feats):
                    rows[h] = row
            self._rows = rows
        return self._rows

    def __contains__(self, sha: str) -> bool:
        with self._lock:
            return sha in self._load()

    def missing(self, hashes: Iterable[str]) -> list[str]:
        with self._lock:
            rows = self._load()
            return [h for h in dict.fromkeys(hashes) if h not in rows]

    def get(self, hashes: Sequence[str]) -> np.ndarray:
        """Stacked features in the order of `hashes`; every hash must be cached."""
        with self._lock:
            rows = self._load()
            if not hashes:
                return np.zeros((0, 0), dtype=np.float32)
            return np.stack([rows[h] for h in hashes]).astype(np.float32, copy=False)

    def put(self, hashes: Sequence[str], features: np.ndarray) -> None:
        from safetensors.numpy import save

        if len(hashes) == 0:
            return
        features = np.ascontiguousarray(features, dtype=np.float32)
        assert features.shape[0] == len(hashes)
        with self._lock:
            rows = self._load()
            blob = save({"features": features}, metadata={"hashes": json.dumps(list(hashes)), "model": self.model_id})
            name = f"features-{time.time_ns()}-{os.getpid()}.safetensors"
            atomic_write_bytes(self.dir / name, blob)
            for h, row in zip(hashes, features):
                rows[h] = row
            shards = sorted(self.dir.glob("features-*.safetensors"))
            if len(shards) > self.MAX_SHARDS:
                self._compact(shards, rows)

    def _compact(self, shards: list[Path], rows: dict[str, np.ndarray]) -> None:
        from safetensors.numpy import save

        hashes = list(rows)
        blob = save({"features": np.stack([rows[h] for h in hashes])},
                    metadata={"hashes": json.dumps(hashes), "model": self.model_id})
        atomic_write_bytes(self.dir / f"features-{time.time_ns()}-{os.getpid()}-all.safetensors", blob)
        for shard in shards:
            shard.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------- workspace
class Workspace:
    """A project directory. Open with :meth:`open` (existing) or :meth:`create` (new or existing)."""

    def __init__(self, root: Path):
        self.root = root
        self._lock = threading.RLock()
        self._caches: dict[str, FeatureCache] = {}
        try:
            self._db = sqlite3.connect(str(root / "workspace.db"), timeout=30, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{root / 'workspace.db'} is not a usable workspace database ({exc})") from None
        if self.meta("schema_version") is None:
            self.set_meta("schema_version", SCHEMA_VERSION)

    # ---- opening
    @classmethod
    def create(cls, root: str | Path) -> "Workspace":
        root = Path(root).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise UserError(f"workspace {root} exists and is not a directory")
        try:
            for sub in ("synthetic", "cache", "lora", "prompts", "report"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            probe = root / f".write-test-{os.getpid()}-{threading.get_ident()}"
            probe.write_bytes(b"")
            probe.unlink(missing_ok=True)
        except OSError as exc:
            raise UserError(f"cannot write to workspace {root}: {exc.strerror or exc}; choose a writable folder") from None
        return cls(root)

    @classmethod
    def open(cls, root: str | Path) -> "Workspace":
        root = Path(root).expanduser().resolve()
        if not (root / "workspace.db").is_file():
            raise UserError(f"{root} is not an AiR workspace (no workspace.db); create it with `python -m air_app init`")
        return cls.create(root)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- low level
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, args: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def meta(self, key: str, default=None):
        rows = self.query("SELECT value FROM meta WHERE key=?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set_meta(self, key: str, value) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    # ---- classes
    def classes(self) -> list[str]:
        return [r[0] for r in self.query("SELECT name FROM classes ORDER BY idx")]

    def seen_classes(self) -> list[int]:
        return [r[0] for r in self.query("SELECT idx FROM classes WHERE seen=1 ORDER BY idx")]

    def set_classes(self, names: Sequence[str], seen: Iterable[int] = ()) -> None:
        """Store the class list. A workspace that already holds samples keeps its classes: changing them is an error."""
        names = list(names)
        current = self.classes()
        if current and current != names:
            has_data = self.query("SELECT COUNT(*) FROM synthetic")[0][0] or self.query("SELECT COUNT(*) FROM images")[0][0]
            if has_data:
                raise UserError(
                    f"workspace {self.root} already holds data for classes {', '.join(current[:5])}"
                    f"{'...' if len(current) > 5 else ''}; use a new workspace for a different class list")
        seen = set(seen)
        with self.transaction() as db:
            db.execute("DELETE FROM classes")
            db.executemany("INSERT INTO classes(idx, name, seen) VALUES (?, ?, ?)",
                           [(i, n, int(i in seen)) for i, n in enumerate(names)])

    # ---- images
    def replace_images(self, rows: Sequence[tuple[str, str, int | None, str, bool]]) -> None:
        """Set the real images: (path, sha, gt, split, labeled) each, in order. Features stay cached by hash."""
        with self.transaction() as db:
            db.execute("DELETE FROM images")
            db.executemany("INSERT INTO images(path, sha, gt, split, labeled) VALUES (?, ?, ?, ?, ?)",
                           [(p, s, g, sp, int(lb)) for p, s, g, sp, lb in rows])

    def images(self, split: str | None = None, usable_only: bool = True) -> list[ImageRecord]:
        sql = "SELECT id, path, sha, gt, split, labeled FROM images WHERE 1=1"
        args: list = []
        if split is not None:
            sql += " AND split=?"
            args.append(split)
        if usable_only:
            sql += " AND usable=1"
        rows = self.query(sql + " ORDER BY id", args)
        return [ImageRecord(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    def mark_unusable(self, image_ids: Sequence[int], reason: str) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE images SET usable=0, problem=? WHERE id=?", [(reason, i) for i in image_ids])

    def unusable_images(self) -> list[tuple[str, str]]:
        return [(r[0], r[1] or "") for r in self.query("SELECT path, problem FROM images WHERE usable=0 ORDER BY id")]

    # ---- synthetic samples
    def synthetic_dir(self, class_idx: int, class_name: str) -> Path:
        return self.root / "synthetic" / f"{class_idx:03d}_{slug(class_name)}"

    def add_synthetic(self, class_idx: int, idx: int, seed: int, prompt: str, path: Path, sha: str) -> None:
        rel = str(Path(path).resolve().relative_to(self.root))
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO synthetic(class_idx, idx, seed, prompt, path, sha, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (class_idx, idx, seed, prompt, rel, sha, time.time()))

    def synthetic(self, class_idx: int | None = None) -> list[SyntheticRecord]:
        sql = ("SELECT id, class_idx, idx, seed, prompt, path, sha, score, auto_keep, manual_keep FROM synthetic")
        args: tuple = ()
        if class_idx is not None:
            sql += " WHERE class_idx=?"
            args = (class_idx,)
        rows = self.query(sql + " ORDER BY class_idx, idx", args)
        return [SyntheticRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7],
                                None if r[8] is None else bool(r[8]), None if r[9] is None else bool(r[9]))
                for r in rows]

    def synthetic_indices(self, class_idx: int) -> set[int]:
        return {r[0] for r in self.query("SELECT idx FROM synthetic WHERE class_idx=?", (class_idx,))}

    def set_synthetic_scores(self, rows: Sequence[tuple[int, float, bool]]) -> None:
        """(id, representative score r_{c,m}, automatic keep flag) for each sample."""
        with self.transaction() as db:
            db.executemany("UPDATE synthetic SET score=?, auto_keep=? WHERE id=?",
                           [(float(s), int(k), i) for i, s, k in rows])

    def set_manual_keep(self, sample_ids: Sequence[int], keep: bool | None) -> None:
        """A user's keep (True) / prune (False) decision, or None to go back to the automatic choice."""
        with self.transaction() as db:
            db.executemany("UPDATE synthetic SET manual_keep=? WHERE id=?",
                           [(None if keep is None else int(keep), i) for i in sample_ids])

    def delete_synthetic(self, class_idx: int | None = None) -> int:
        """Remove samples (all, or one class's) from the index and from disk; returns how many."""
        records = self.synthetic(class_idx)
        with self.transaction() as db:
            if class_idx is None:
                db.execute("DELETE FROM synthetic")
            else:
                db.execute("DELETE FROM synthetic WHERE class_idx=?", (class_idx,))
        for r in records:
            (self.root / r.path).unlink(missing_ok=True)
        return len(records)

    # ---- stage bookkeeping
    def stage_fingerprint(self, name: str) -> str | None:
        rows = self.query("SELECT fingerprint FROM stages WHERE name=?", (name,))
        return rows[0][0] if rows else None

    def stage_info(self, name: str) -> dict:
        rows = self.query("SELECT info FROM stages WHERE name=?", (name,))
        return json.loads(rows[0][0]) if rows else {}

    def finish_stage(self, name: str, fingerprint: str, info: dict | None = None) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO stages(name, fingerprint, finished, info) VALUES (?, ?, ?, ?)",
                       (name, fingerprint, time.time(), json.dumps(info or {})))

    def clear_stage(self, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM stages WHERE name=?", (name,))

    def start_run(self, command: str, config_json: str) -> int:
        with self.transaction() as db:
            cur = db.execute("INSERT INTO runs(command, started, status, config) VALUES (?, ?, 'running', ?)",
                             (command, time.time(), config_json))
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, status: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET finished=?, status=? WHERE id=?", (time.time(), status, run_id))

    # ---- caches
    def feature_cache(self, model_id: str) -> FeatureCache:
        with self._lock:
            if model_id not in self._caches:
                self._caches[model_id] = FeatureCache(self.root / "cache", model_id)
            return self._caches[model_id]


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable parts, used to decide whether a stage is up to date."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
