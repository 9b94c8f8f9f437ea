"""Evaluation math and report writers: accuracy, harmonic mean, confusion (array and PNG), probs/predictions/metrics."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from air_app.engine import evaluate as ev

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------------ accuracy
def test_accuracy_ignores_unknown_gt():
    pred = np.array([0, 1, 2, 2, 0, 1])
    gt = np.array([0, 1, 1, -1, -1, 0])
    assert ev.accuracy(pred, gt) == pytest.approx(2 / 4)
    assert ev.accuracy(pred, np.full(6, -1)) is None
    assert ev.accuracy(np.array([], dtype=int), np.array([], dtype=int)) is None
    assert ev.accuracy(np.array([3]), np.array([3])) == 1.0


def test_per_class_accuracy():
    pred = np.array([0, 0, 1, 1, 2, 0])
    gt = np.array([0, 1, 1, 1, -1, 0])
    assert ev.per_class_accuracy(pred, gt, 3) == [1.0, pytest.approx(2 / 3), None]


@pytest.mark.parametrize("a, b, h", [(0.5, 0.5, 0.5), (0.8, 0.4, 2 * 0.8 * 0.4 / 1.2), (1.0, 0.0, 0.0),
                                     (0.0, 0.0, 0.0), (None, 0.5, None), (0.5, None, None)])
def test_harmonic_mean(a, b, h):
    out = ev.harmonic_mean(a, b)
    assert out == (pytest.approx(h) if h is not None else None)


# ----------------------------------------------------------------------------------------------------- confusion
def test_confusion_by_hand():
    gt = np.array([0, 0, 1, 1, 1, 2, -1])
    pred = np.array([0, 1, 1, 1, 0, 0, 2])
    cm = ev.confusion(gt, pred, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [1, 2, 0], [1, 0, 0]])
    assert cm.sum() == 6  # the unknown row is ignored


def test_confusion_full_size_when_classes_missing():
    # class 3 never predicted, class 2 never present, class 4 neither
    cm = ev.confusion(np.array([0, 1, 3]), np.array([1, 1, 2]), 5)
    assert cm.shape == (5, 5)
    expected = np.zeros((5, 5), dtype=int)
    expected[0, 1] = expected[1, 1] = expected[3, 2] = 1
    np.testing.assert_array_equal(cm, expected)


def test_confusion_without_any_ground_truth():
    cm = ev.confusion(np.array([-1, -1]), np.array([0, 1]), 3)
    assert cm.shape == (3, 3) and cm.sum() == 0
    assert ev.confusion(np.array([], dtype=int), np.array([], dtype=int), 2).shape == (2, 2)


def test_confusion_random_against_loop():
    rng = np.random.default_rng(0)
    gt = rng.integers(-1, 6, 300)
    pred = rng.integers(0, 6, 300)
    cm = ev.confusion(gt, pred, 6)
    ref = np.zeros((6, 6), dtype=int)
    for g, p in zip(gt, pred):
        if g >= 0:
            ref[g, p] += 1
    np.testing.assert_array_equal(cm, ref)


def test_confusion_png_small():
    png = ev.confusion_png(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 2]), ["cat", "dog", "a" * 40], "text")
    assert isinstance(png, bytes) and png.startswith(PNG_MAGIC)


def test_confusion_png_many_classes_and_missing_ones(tmp_path):
    rng = np.random.default_rng(1)
    classes = [f"class {i}" for i in range(60)]
    gt = rng.integers(0, 50, 200)  # classes 50..59 absent
    pred = rng.integers(0, 40, 200)  # classes 40..59 never predicted
    png = ev.confusion_png(gt, pred, classes, "fused")
    assert png.startswith(PNG_MAGIC)
    from PIL import Image
    import io

    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and min(img.size) > 300
    p = ev.write_confusion(tmp_path / "report" / "confusion_fused.png", gt, pred, classes, "fused")
    assert p.read_bytes().startswith(PNG_MAGIC)


def test_confusion_png_without_ground_truth():
    assert ev.confusion_png(np.array([-1, -1]), np.array([0, 1]), ["a", "b"], "t").startswith(PNG_MAGIC)


# ------------------------------------------------------------------------------------------------ report files
def test_write_probs_round_trip(tmp_path):
    text = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]], dtype=np.float32)
    aux = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])
    fused = (text + 0.5 * aux) / 1.5
    p = ev.write_probs(tmp_path / "report" / "probs.npz", text, aux, fused, ["café", "golden retriever"], 0.5)
    assert p.is_file() and not list(p.parent.glob(".*tmp"))
    with np.load(p, allow_pickle=False) as z:
        assert sorted(z.files) == ["aux", "classes", "fused", "lam", "text"]
        np.testing.assert_allclose(z["text"], text)
        np.testing.assert_array_equal(z["aux"], aux)
        np.testing.assert_array_equal(z["fused"], fused)
        assert z["text"].dtype == np.float64
        assert z["classes"].dtype.kind == "U" and z["classes"].tolist() == ["café", "golden retriever"]
        assert z["lam"].shape == () and float(z["lam"]) == 0.5


def test_write_predictions_header_and_rows(tmp_path):
    row = {"path": "/x/a.jpg", "split": "train", "labeled": 0, "gt": "cat", "text_pred": "dog",
           "text_conf": "0.600000", "aux_pred": "cat", "aux_conf": "0.700000", "fused_pred": "cat",
           "fused_conf": "0.650000", "selected": 1, "pseudo_label": "cat"}
    row2 = dict(row, path="/x/b, with comma.jpg", gt="", selected=0, pseudo_label="")
    p = ev.write_predictions(tmp_path / "predictions.csv", [row, row2])
    text = p.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ("path,split,labeled,gt,text_pred,text_conf,aux_pred,aux_conf,fused_pred,"
                                    "fused_conf,selected,pseudo_label")
    assert ev.PREDICTION_COLUMNS == text.splitlines()[0].split(",")
    with open(p, newline="", encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == 2
    assert got[0] == {k: str(v) for k, v in row.items()}
    assert got[1]["path"] == "/x/b, with comma.jpg" and got[1]["gt"] == "" and got[1]["selected"] == "0"
    assert "\r" not in text


def test_write_predictions_empty_and_bad_column(tmp_path):
    p = ev.write_predictions(tmp_path / "p.csv", [])
    assert p.read_text(encoding="utf-8") == ",".join(ev.PREDICTION_COLUMNS) + "\n"
    with pytest.raises(ValueError):
        ev.write_predictions(tmp_path / "q.csv", [{"path": "a", "nope": 1}])


def test_update_metrics_merges(tmp_path):
    path = tmp_path / "report" / "metrics.json"
    m1 = ev.update_metrics(path, {"paradigm": "ul", "pseudo_label_accuracy": {"text": 0.5, "aux": 0.4},
                                  "n": np.int64(3), "acc": np.float32(0.25), "arr": np.arange(3)})
    assert m1["paradigm"] == "ul"
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert on_disk["n"] == 3 and on_disk["acc"] == 0.25 and on_disk["arr"] == [0, 1, 2]
    assert on_disk["versions"]["air_app"] and on_disk["versions"]["python"]
    m2 = ev.update_metrics(path, {"final_accuracy": 0.9, "pseudo_label_accuracy": {"fused": 0.6}})
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert on_disk == m2
    assert on_disk["paradigm"] == "ul" and on_disk["final_accuracy"] == 0.9  # merged
    assert on_disk["pseudo_label_accuracy"] == {"fused": 0.6}  # a section is replaced whole


def test_update_metrics_recovers_from_corrupt_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("{not json", encoding="utf-8")
    m = ev.update_metrics(path, {"seed": 1})
    assert m["seed"] == 1 and json.loads(path.read_text(encoding="utf-8"))["seed"] == 1
    assert ev.read_json(tmp_path / "missing.json") == {}


def test_update_metrics_rejects_unserialisable(tmp_path):
    with pytest.raises(TypeError):
        ev.update_metrics(tmp_path / "m.json", {"x": object()})
