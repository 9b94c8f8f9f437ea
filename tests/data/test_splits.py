"""Seeded paradigm splits: UL, SSL (n labeled per class), TRZSL (seen classes) and the stratified holdout."""

from __future__ import annotations

import numpy as np
import pytest

from air_app.data.splits import ParadigmSplit, holdout_split, make_split, seen_unseen_classes
from air_app.errors import UserError


def _labels(per_class, seed=0):
    """Shuffled labels with per_class[c] images of class c."""
    lab = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)]).astype(np.int64)
    return np.random.default_rng(seed).permutation(lab)


# ---------------------------------------------------------------------------------------------------------- UL
def test_ul_has_no_labels():
    labels = _labels([5, 5, 5])
    s = make_split("ul", labels, 3, seed=0)
    assert s.paradigm == "ul" and s.seen_classes == ()
    assert s.labeled.dtype == bool and s.labeled.shape == (15,) and not s.labeled.any()
    assert s.pseudo_classes(3) == [0, 1, 2]


def test_ul_accepts_unlabeled_images():
    s = make_split("ul", np.full(7, -1), 4, seed=3)
    assert not s.labeled.any() and len(s.labeled) == 7


# --------------------------------------------------------------------------------------------------------- SSL
@pytest.mark.parametrize("n", [1, 2, 4])
def test_ssl_exactly_n_per_class(n):
    labels = _labels([10, 5, 7, 20])
    s = make_split("ssl", labels, 4, seed=1, labeled_per_class=n)
    assert s.paradigm == "ssl" and s.seen_classes == ()
    for c in range(4):
        assert s.labeled[labels == c].sum() == n
    assert s.labeled.sum() == 4 * n
    assert s.pseudo_classes(4) == [0, 1, 2, 3]


def test_ssl_reproducible_and_seed_dependent():
    labels = _labels([30] * 5)
    a = make_split("ssl", labels, 5, seed=7).labeled
    b = make_split("ssl", labels, 5, seed=7).labeled
    np.testing.assert_array_equal(a, b)
    others = [make_split("ssl", labels, 5, seed=s).labeled for s in range(8, 12)]
    assert any((o != a).any() for o in others)
    assert all(o.sum() == a.sum() == 10 for o in others)


def test_ssl_needs_labels():
    labels = _labels([5, 5])
    labels[3] = -1
    with pytest.raises(UserError) as info:
        make_split("ssl", labels, 2, seed=0)
    msg = str(info.value)
    assert "SSL paradigm needs labeled images" in msg and "--paradigm ul" in msg


def test_ssl_needs_more_than_n_images_per_class():
    labels = _labels([5, 2, 3])  # class 1 has exactly n=2 images: none would be left unlabeled
    with pytest.raises(UserError) as info:
        make_split("ssl", labels, 3, seed=0, labeled_per_class=2)
    msg = str(info.value)
    assert "1 class(es) have fewer" in msg and "class index 1" in msg and "--labeled-per-class" in msg
    make_split("ssl", _labels([5, 3, 3]), 3, seed=0, labeled_per_class=2)  # n + 1 is enough


def test_ssl_class_without_images_is_short():
    with pytest.raises(UserError, match="class index 2"):
        make_split("ssl", _labels([5, 5]), 3, seed=0, labeled_per_class=1)


# ------------------------------------------------------------------------------------------------------- TRZSL
@pytest.mark.parametrize("c", [2, 3, 4, 10, 45, 102])
def test_seen_count(c):
    seen = seen_unseen_classes(c, 0.62, seed=0)
    assert len(seen) == min(max(int(0.62 * c), 1), c - 1)
    assert list(seen) == sorted(set(seen)) and all(0 <= s < c for s in seen)


def test_seen_count_hand_values():
    assert len(seen_unseen_classes(10, 0.62, 0)) == 6
    assert len(seen_unseen_classes(102, 0.62, 0)) == 63
    assert len(seen_unseen_classes(45, 0.62, 0)) == 27
    assert len(seen_unseen_classes(2, 0.62, 0)) == 1  # int(1.24) = 1
    assert len(seen_unseen_classes(3, 0.1, 0)) == 1  # at least one seen
    assert len(seen_unseen_classes(3, 0.99, 0)) == 2  # at least one unseen
    assert len(seen_unseen_classes(2, 0.99, 0)) == 1


def test_seen_classes_seeded():
    assert seen_unseen_classes(20, 0.62, 5) == seen_unseen_classes(20, 0.62, 5)
    assert len({seen_unseen_classes(20, 0.62, s) for s in range(6)}) > 1


@pytest.mark.parametrize("c", [0, 1])
def test_trzsl_needs_two_classes(c):
    with pytest.raises(UserError, match="at least 2 classes"):
        seen_unseen_classes(c, 0.62, 0)
    with pytest.raises(UserError, match="at least 2 classes"):
        make_split("trzsl", np.zeros(4, dtype=int), c, seed=0)


def test_trzsl_labeled_are_seen_class_images():
    labels = _labels([4, 5, 6, 7, 8, 3, 2, 9, 1, 5])
    s = make_split("trzsl", labels, 10, seed=3)
    assert s.paradigm == "trzsl" and len(s.seen_classes) == 6
    np.testing.assert_array_equal(s.labeled, np.isin(labels, s.seen_classes))
    assert s.seen_classes == seen_unseen_classes(10, 0.62, 3)
    assert s.pseudo_classes(10) == [c for c in range(10) if c not in s.seen_classes]
    assert set(s.pseudo_classes(10)) | set(s.seen_classes) == set(range(10))
    again = make_split("trzsl", labels, 10, seed=3)
    assert again.seen_classes == s.seen_classes


def test_trzsl_seen_fraction_used():
    labels = _labels([3] * 10)
    assert len(make_split("trzsl", labels, 10, seed=0, seen_fraction=0.3).seen_classes) == 3


def test_trzsl_needs_labels():
    with pytest.raises(UserError, match="TRZSL paradigm needs labeled images"):
        make_split("trzsl", np.full(6, -1), 3, seed=0)


def test_trzsl_no_unseen_images():
    # 3 classes declared, but only images of one class: if it is the seen one, nothing is left to pseudo-label
    seen = seen_unseen_classes(3, 0.62, 0)
    labels = np.full(6, seen[0])
    with pytest.raises(UserError, match="no unseen-class images"):
        make_split("trzsl", labels, 3, seed=0)


def test_unknown_paradigm():
    with pytest.raises(UserError, match="unknown paradigm 'zsl'"):
        make_split("zsl", np.zeros(3, dtype=int), 2, seed=0)


def test_paradigm_split_pseudo_classes_direct():
    s = ParadigmSplit("trzsl", np.zeros(0, dtype=bool), (0, 2))
    assert s.pseudo_classes(4) == [1, 3]
    assert ParadigmSplit("ssl", np.zeros(0, dtype=bool), ()).pseudo_classes(2) == [0, 1]


# ----------------------------------------------------------------------------------------------------- holdout
def test_holdout_stratified():
    labels = _labels([10, 20, 5, 3])
    test = holdout_split(labels, 0.2, seed=0)
    assert test.dtype == bool and test.shape == labels.shape
    # round(0.2 n) per class, capped at n - 1
    assert [int(test[labels == c].sum()) for c in range(4)] == [2, 4, 1, 1]
    np.testing.assert_array_equal(test, holdout_split(labels, 0.2, seed=0))
    assert any((holdout_split(labels, 0.2, seed=s) != test).any() for s in range(1, 5))


def test_holdout_keeps_one_train_image_per_class():
    labels = _labels([1, 2, 3, 10])
    test = holdout_split(labels, 0.9, seed=1)
    for c in range(4):
        assert (~test[labels == c]).sum() >= 1
    assert [int(test[labels == c].sum()) for c in range(4)] == [0, 1, 2, 9]


def test_holdout_zero_fraction_and_unknown_labels():
    labels = np.array([0, 0, 1, 1, -1, -1, -1])
    assert not holdout_split(labels, 0.0, seed=0).any()
    test = holdout_split(labels, 0.5, seed=0)
    assert not test[labels < 0].any()  # unknown ground truth never goes to the test split
    assert int(test[labels == 0].sum()) == 1 and int(test[labels == 1].sum()) == 1
    assert not holdout_split(np.full(4, -1), 0.5, seed=0).any()
