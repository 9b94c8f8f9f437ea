"""The on-disk workspace: atomic writes, SQLite index, synthetic bookkeeping, stage fingerprints, feature cache."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from air_app.errors import UserError
from air_app.workspace import (FeatureCache, SyntheticRecord, Workspace, atomic_save_image, atomic_write_bytes,
                               atomic_write_text, file_sha256, fingerprint, slug)


# ----------------------------------------------------------------------------------------------- atomic writes
def test_atomic_write_creates_and_replaces(tmp_path):
    target = tmp_path / "sub" / "deeper" / "f.bin"
    assert atomic_write_bytes(target, b"first") == target
    assert target.read_bytes() == b"first"
    atomic_write_bytes(target, b"second, longer content")
    assert target.read_bytes() == b"second, longer content"
    atomic_write_bytes(target, b"")
    assert target.read_bytes() == b""
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]  # no temp files left


def test_atomic_write_failure_leaves_old_content_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_write_text_is_utf8(tmp_path):
    p = atomic_write_text(tmp_path / "t.txt", "café ✓")
    assert p.read_bytes() == "café ✓".encode("utf-8")


def test_atomic_save_image_and_sha(tmp_path):
    img = Image.new("RGB", (5, 3), (1, 2, 3))
    p = atomic_save_image(tmp_path / "a" / "x.png", img)
    with Image.open(p) as back:
        assert back.format == "PNG" and back.size == (5, 3) and back.getpixel((4, 2)) == (1, 2, 3)
    assert file_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_slug():
    assert slug("Red Circle") == "red_circle"
    assert slug("  --Hello, World!!  ") == "hello_world"
    assert slug("日本") == "class"
    assert slug("") == "class"
    assert len(slug("a" * 100)) == 60


# ------------------------------------------------------------------------------------------------ open / create
def test_create_makes_layout_and_open_reopens(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    for sub in ("synthetic", "cache", "lora", "prompts", "report"):
        assert (tmp_path / "ws" / sub).is_dir()
    assert (tmp_path / "ws" / "workspace.db").is_file()
    assert ws.meta("schema_version") == 1
    ws.set_meta("note", {"a": [1, 2]})
    ws.close()
    ws2 = Workspace.open(tmp_path / "ws")
    assert ws2.meta("note") == {"a": [1, 2]}
    assert ws2.meta("absent", "dflt") == "dflt"
    assert ws2.path("report", "x.json") == (tmp_path / "ws").resolve() / "report" / "x.json"
    assert not list((tmp_path / "ws").glob(".write-test-*"))
    ws2.close()


def test_open_non_workspace(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not an AiR workspace"):
        Workspace.open(tmp_path / "plain")
    with pytest.raises(UserError, match="not an AiR workspace"):
        Workspace.open(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()  # open never creates


def test_open_corrupt_database(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "workspace.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="not a usable workspace database"):
        Workspace.open(root)


def test_create_on_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        Workspace.create(f)


def test_create_unwritable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running with privileges that ignore directory permissions")
        with pytest.raises(UserError, match="cannot write to workspace"):
            Workspace.create(ro / "ws")
        with pytest.raises(UserError, match="choose a writable folder"):
            Workspace.create(ro)
    finally:
        ro.chmod(stat.S_IRWXU)


def test_create_unwritable_simulated(tmp_path, monkeypatch):
    """The same path without relying on file permissions (which root ignores)."""
    from pathlib import Path

    def denied(self, data):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", denied)
    with pytest.raises(UserError) as info:
        Workspace.create(tmp_path / "ws")
    assert "cannot write to workspace" in str(info.value) and "Permission denied" in str(info.value)


@pytest.fixture
def ws(tmp_path):
    w = Workspace.create(tmp_path / "ws")
    yield w
    w.close()


# ---------------------------------------------------------------------------------------------------- classes
def test_classes_round_trip_and_seen(ws):
    assert ws.classes() == [] and ws.seen_classes() == []
    ws.set_classes(["b", "a", "c"], seen=[0, 2])
    assert ws.classes() == ["b", "a", "c"]
    assert ws.seen_classes() == [0, 2]
    ws.set_classes(["x", "y"])  # no data yet: a different list is fine
    assert ws.classes() == ["x", "y"] and ws.seen_classes() == []


def test_classes_locked_once_images_exist(ws):
    ws.set_classes(["cat", "dog"])
    ws.replace_images([("/a.jpg", "h1", 0, "train", False)])
    with pytest.raises(UserError, match="already holds data for classes cat, dog"):
        ws.set_classes(["cat", "cow"])
    assert ws.classes() == ["cat", "dog"]  # unchanged
    ws.set_classes(["cat", "dog"], seen=[1])  # the same list is fine (seen flags may change)
    assert ws.seen_classes() == [1]


def test_classes_locked_once_synthetic_exist(ws):
    ws.set_classes(["cat", "dog"])
    p = ws.synthetic_dir(0, "cat") / "0.png"
    atomic_write_bytes(p, b"png")
    ws.add_synthetic(0, 0, 11, "a cat", p, "sha")
    with pytest.raises(UserError, match="new workspace"):
        ws.set_classes(["dog", "cat"])  # order matters: it changes label indices


# ----------------------------------------------------------------------------------------------------- images
def test_images_round_trip(ws):
    ws.set_classes(["a", "b"])
    rows = [("/x/1.jpg", "s1", 0, "train", True), ("/x/2.jpg", "s2", None, "train", False),
            ("/x/3.jpg", "s3", 1, "test", False)]
    ws.replace_images(rows)
    got = ws.images()
    assert [(r.path, r.sha, r.gt, r.split, r.labeled) for r in got] == [
        ("/x/1.jpg", "s1", 0, "train", True), ("/x/2.jpg", "s2", None, "train", False),
        ("/x/3.jpg", "s3", 1, "test", False)]
    assert [r.path for r in ws.images("test")] == ["/x/3.jpg"]
    assert [r.path for r in ws.images("train")] == ["/x/1.jpg", "/x/2.jpg"]
    ws.mark_unusable([got[1].id], "could not be decoded")
    assert [r.path for r in ws.images()] == ["/x/1.jpg", "/x/3.jpg"]
    assert len(ws.images(usable_only=False)) == 3
    assert ws.unusable_images() == [("/x/2.jpg", "could not be decoded")]
    ws.replace_images(rows[:1])  # replaces, not appends
    assert [r.path for r in ws.images(usable_only=False)] == ["/x/1.jpg"]


# -------------------------------------------------------------------------------------------------- synthetic
def _add(ws, c, i, name="cat", seed=None, content=b"img"):
    p = ws.synthetic_dir(c, name) / f"{i}.png"
    atomic_write_bytes(p, content)
    ws.add_synthetic(c, i, seed if seed is not None else 100 * c + i, f"a photo of a {name}.", p,
                     hashlib.sha256(content).hexdigest())
    return p


def test_synthetic_dir(ws):
    assert ws.synthetic_dir(3, "Red Circle!") == ws.root / "synthetic" / "003_red_circle"


def test_synthetic_add_list_and_replace(ws):
    ws.set_classes(["cat", "dog"])
    for i in range(3):
        _add(ws, 0, i)
    _add(ws, 1, 0, "dog")
    recs = ws.synthetic()
    assert [(r.class_idx, r.idx, r.seed) for r in recs] == [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 100)]
    assert recs[0].path == os.path.join("synthetic", "000_cat", "0.png")  # relative to the workspace
    assert recs[0].prompt == "a photo of a cat."
    assert recs[0].score is None and recs[0].auto_keep is None and recs[0].manual_keep is None
    assert ws.synthetic_indices(0) == {0, 1, 2} and ws.synthetic_indices(1) == {0} and ws.synthetic_indices(5) == set()
    assert [r.idx for r in ws.synthetic(1)] == [0]
    # re-adding (class 0, idx 1) replaces the row, never duplicates it
    _add(ws, 0, 1, seed=999, content=b"other")
    recs = ws.synthetic(0)
    assert len(recs) == 3
    assert [r.seed for r in recs] == [0, 999, 2]
    assert recs[1].sha == hashlib.sha256(b"other").hexdigest()
    assert ws.query("SELECT COUNT(*) FROM synthetic")[0][0] == 4


def test_synthetic_path_outside_workspace_is_rejected(ws, tmp_path):
    with pytest.raises(ValueError):
        ws.add_synthetic(0, 0, 0, "p", tmp_path / "elsewhere.png", "sha")


def test_scores_auto_and_manual_keep(ws):
    ws.set_classes(["cat", "dog"])
    for i in range(3):
        _add(ws, 0, i)
    ids = [r.id for r in ws.synthetic()]
    ws.set_synthetic_scores([(ids[0], 0.9, True), (ids[1], 0.5, False), (ids[2], np.float32(0.25), True)])
    recs = ws.synthetic()
    assert [r.score for r in recs] == pytest.approx([0.9, 0.5, 0.25])
    assert [r.auto_keep for r in recs] == [True, False, True]
    assert [r.kept for r in recs] == [True, False, True]
    # the user prunes an automatically kept one and restores a pruned one
    ws.set_manual_keep([ids[0]], False)
    ws.set_manual_keep([ids[1]], True)
    recs = ws.synthetic()
    assert [r.manual_keep for r in recs] == [False, True, None]
    assert [r.kept for r in recs] == [False, True, True]
    # a new automatic selection does not override the manual decisions
    ws.set_synthetic_scores([(ids[0], 0.9, True), (ids[1], 0.5, False), (ids[2], 0.25, False)])
    assert [r.kept for r in ws.synthetic()] == [False, True, False]
    # back to automatic
    ws.set_manual_keep(ids[:2], None)
    recs = ws.synthetic()
    assert [r.manual_keep for r in recs] == [None, None, None]
    assert [r.kept for r in recs] == [True, False, False]
    # decisions persist across reopening
    ws.set_manual_keep([ids[2]], True)
    again = Workspace.open(ws.root)
    assert [r.kept for r in again.synthetic()] == [True, False, True]
    again.close()


@pytest.mark.parametrize("auto, manual, kept", [
    (None, None, False), (True, None, True), (False, None, False),
    (True, False, False), (False, True, True), (None, True, True), (None, False, False),
])
def test_synthetic_record_kept(auto, manual, kept):
    r = SyntheticRecord(1, 0, 0, 0, "p", "x.png", "s", 0.5, auto, manual)
    assert r.kept is kept


def test_delete_synthetic(ws):
    ws.set_classes(["cat", "dog"])
    p0 = _add(ws, 0, 0)
    p1 = _add(ws, 1, 0, "dog")
    p2 = _add(ws, 1, 1, "dog")
    assert ws.delete_synthetic(1) == 2
    assert not p1.exists() and not p2.exists() and p0.exists()
    assert [(r.class_idx, r.idx) for r in ws.synthetic()] == [(0, 0)]
    p1.parent.rmdir()  # nothing else was left behind
    assert ws.delete_synthetic() == 1
    assert ws.synthetic() == [] and not p0.exists()
    assert ws.delete_synthetic() == 0


# ------------------------------------------------------------------------------------------------------ stages
def test_stage_fingerprints(ws):
    assert ws.stage_fingerprint("select") is None and ws.stage_info("select") == {}
    ws.finish_stage("select", "abc", {"kept": 3})
    assert ws.stage_fingerprint("select") == "abc" and ws.stage_info("select") == {"kept": 3}
    ws.finish_stage("select", "def")
    assert ws.stage_fingerprint("select") == "def" and ws.stage_info("select") == {}
    ws.finish_stage("synth", "s1")
    ws.clear_stage("select")
    assert ws.stage_fingerprint("select") is None and ws.stage_fingerprint("synth") == "s1"


def test_runs(ws):
    r1 = ws.start_run("pseudolabel", '{"seed": 1}')
    r2 = ws.start_run("train", "{}")
    assert r2 == r1 + 1
    ws.finish_run(r1, "done")
    rows = ws.query("SELECT id, command, status, config, finished IS NOT NULL FROM runs ORDER BY id")
    assert rows == [(r1, "pseudolabel", "done", '{"seed": 1}', 1), (r2, "train", "running", "{}", 0)]


def test_transaction_rolls_back(ws):
    ws.set_classes(["a", "b"])
    with pytest.raises(RuntimeError):
        with ws.transaction() as db:
            db.execute("DELETE FROM classes")
            raise RuntimeError("boom")
    assert ws.classes() == ["a", "b"]


def test_fingerprint_stable():
    a = fingerprint("synth", {"m": 64, "seed": 0}, [1, 2])
    assert a == fingerprint("synth", {"seed": 0, "m": 64}, [1, 2])  # key order does not matter
    assert a == fingerprint("synth", {"seed": 0, "m": 64}, (1, 2))  # tuples serialise as lists
    expected = hashlib.sha256(json.dumps(["synth", {"m": 64, "seed": 0}, [1, 2]], sort_keys=True).encode())
    assert a == expected.hexdigest()[:20]
    assert len(a) == 20 and int(a, 16) >= 0
    assert a != fingerprint("synth", {"m": 65, "seed": 0}, [1, 2])
    assert a != fingerprint("synth", {"m": 64, "seed": 0}, [2, 1])
    assert fingerprint() == hashlib.sha256(b"[]").hexdigest()[:20]


# ------------------------------------------------------------------------------------------------ feature cache
def _feats(n, d=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_feature_cache_put_get_missing(ws):
    cache = ws.feature_cache("tiny:clip")
    assert ws.feature_cache("tiny:clip") is cache
    assert ws.feature_cache("other") is not cache
    f = _feats(3)
    assert cache.missing(["h1", "h2", "h1"]) == ["h1", "h2"]  # deduplicated, order kept
    cache.put([], np.zeros((0, 4)))  # a no-op
    cache.put(["h1", "h2", "h3"], f)
    assert "h2" in cache and "zz" not in cache
    assert cache.missing(["h3", "h4", "h1", "h5", "h4"]) == ["h4", "h5"]
    got = cache.get(["h3", "h1", "h3"])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, f[[2, 0, 2]])
    assert cache.get([]).shape[0] == 0
    with pytest.raises(KeyError):
        cache.get(["nope"])


def test_feature_cache_float64_input_stored_as_float32(ws):
    cache = ws.feature_cache("m")
    f = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float64)
    cache.put(["a", "b"], f)
    assert cache.get(["b"]).dtype == np.float32
    np.testing.assert_array_equal(cache.get(["b", "a"]), [[3.0, 4.0], [1.0, 2.0]])


def test_feature_cache_models_are_separate(ws):
    ws.feature_cache("m1").put(["h"], _feats(1))
    assert ws.feature_cache("m2").missing(["h"]) == ["h"]
    dirs = sorted(p.name for p in (ws.root / "cache").iterdir())
    assert dirs == sorted(hashlib.sha256(m.encode()).hexdigest()[:16] for m in ("m1",))


def test_feature_cache_persists(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    f1, f2 = _feats(2, seed=1), _feats(2, seed=2)
    ws.feature_cache("m").put(["a", "b"], f1)
    ws.feature_cache("m").put(["c", "a"], f2)  # "a" recomputed later: the newer row wins
    ws.close()
    again = Workspace.open(tmp_path / "ws")
    cache = again.feature_cache("m")
    assert cache.missing(["a", "b", "c", "d"]) == ["d"]
    np.testing.assert_array_equal(cache.get(["a", "b", "c"]), np.stack([f2[1], f1[1], f2[0]]))
    again.close()


def test_feature_cache_compaction_keeps_every_row(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    cache = ws.feature_cache("m")
    n_puts = FeatureCache.MAX_SHARDS + 3
    expected = {}
    for i in range(n_puts):
        f = _feats(2, seed=i)
        hashes = [f"h{i}a", f"h{i}b"]
        cache.put(hashes, f)
        expected.update(zip(hashes, f))
    shards = list(cache.dir.glob("features-*.safetensors"))
    assert 1 <= len(shards) <= FeatureCache.MAX_SHARDS
    assert not list(cache.dir.glob(".*tmp"))
    keys = sorted(expected)
    np.testing.assert_array_equal(cache.get(keys), np.stack([expected[k] for k in keys]))
    ws.close()
    # a fresh instance reads the compacted shards back
    fresh = FeatureCache(tmp_path / "ws" / "cache", "m")
    assert fresh.missing(keys) == []
    np.testing.assert_array_equal(fresh.get(keys), np.stack([expected[k] for k in keys]))


def test_feature_cache_corrupt_shard_ignored(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    cache = ws.feature_cache("m")
    f = _feats(2)
    cache.put(["a", "b"], f)
    cache.put(["c"], _feats(1, seed=5))
    shards = sorted(cache.dir.glob("features-*.safetensors"))
    assert len(shards) == 2
    shards[1].write_bytes(os.urandom(64))  # the shard holding "c" is damaged
    (cache.dir / "features-9-truncated.safetensors").write_bytes(b"")
    ws.close()
    again = Workspace.open(tmp_path / "ws")
    cache = again.feature_cache("m")
    assert cache.missing(["a", "b", "c"]) == ["c"]  # recomputed, no crash
    np.testing.assert_array_equal(cache.get(["a", "b"]), f)
    g = _feats(1, seed=6)
    cache.put(["c"], g)
    np.testing.assert_array_equal(cache.get(["c"]), g)
    again.close()
