"""Pseudo-label math (DESIGN §3 steps 3-6) against hand computations and brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from air_app.engine.pseudolabel import (Selection, aux_probs, fuse, grip_budget, masked_softmax, prototypes,
                                        representative_scores, select_pseudolabels, select_representatives,
                                        text_probs, top_per_class)


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softmax_row(row):
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


# ------------------------------------------------------------------------------------------------ masked softmax
def test_masked_softmax_hand_values():
    p = masked_softmax(np.array([[0.0, math.log(3.0)], [1.0, 1.0]]))
    np.testing.assert_allclose(p, [[0.25, 0.75], [0.5, 0.5]], rtol=0, atol=1e-15)
    assert p.dtype == np.float64


def test_masked_softmax_rows_sum_to_one_and_mask_is_exact_zero():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 7)) * 30
    mask = np.array([True, False, True, True, False, False, True])
    p = masked_softmax(logits, mask)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    assert (p[:, ~mask] == 0.0).all()
    assert (p[:, mask] > 0).all()
    # equal to a plain softmax over the allowed columns
    np.testing.assert_allclose(p[:, mask], masked_softmax(logits[:, mask]), atol=1e-15)


def test_masked_softmax_large_logits_stable():
    p = masked_softmax(np.array([[1000.0, 0.0, -1000.0]]))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, [[1.0, 0.0, 0.0]], atol=1e-300)


def test_masked_softmax_all_masked_gives_zero_rows():
    p = masked_softmax(np.ones((2, 3)), np.zeros(3, dtype=bool))
    assert not np.isnan(p).any() and (p == 0).all()


# --------------------------------------------------------------------------------------------------- text probs
def test_text_probs_by_hand():
    img = _unit([[1.0, 0.0], [0.6, 0.8]])
    txt = _unit([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    s = 10.0
    p = text_probs(img, txt, s)
    expected = [_softmax_row([s * 1, s * 0, s * -1]), _softmax_row([s * 0.6, s * 0.8, s * -0.6])]
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    # TRZSL: only the unseen classes 1 and 2
    mask = np.array([False, True, True])
    pm = text_probs(img, txt, s, mask)
    np.testing.assert_allclose(pm[:, 0], 0.0, atol=0)
    np.testing.assert_allclose(pm[0, 1:], _softmax_row([0.0, -10.0]), rtol=1e-12)
    np.testing.assert_allclose(pm[1, 1:], _softmax_row([8.0, -6.0]), rtol=1e-12)


# --------------------------------------------------------------------------------------- representative scores
def test_representative_scores_by_hand():
    # class 0: three samples; class 1: two samples (unnormalised inputs: they are normalised first)
    feats = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [0.0, -1.0], [-5.0, 0.0]])
    labels = np.array([0, 0, 0, 1, 1])
    r = representative_scores(feats, labels, 2)
    g = _unit(feats)
    mu0 = _unit(g[:3].mean(0))  # (1 + 1/√2, 1 + 1/√2) / norm -> (1/√2, 1/√2)
    mu1 = _unit(g[3:].mean(0))  # (-1/2, -1/2) -> (-1/√2, -1/√2)
    np.testing.assert_allclose(mu0, [2 ** -0.5, 2 ** -0.5])
    expected = [g[0] @ mu0, g[1] @ mu0, g[2] @ mu0, g[3] @ mu1, g[4] @ mu1]
    np.testing.assert_allclose(r, expected, atol=1e-12)
    np.testing.assert_allclose(r, [2 ** -0.5, 2 ** -0.5, 1.0, 2 ** -0.5, 2 ** -0.5], atol=1e-12)


def test_representative_scores_random_against_loop():
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((40, 6))
    labels = rng.integers(0, 4, 40)
    r = representative_scores(feats, labels, 5)  # class 4 has no samples: fine
    for i in range(40):
        members = _unit(feats[labels == labels[i]])
        mu = members.mean(0)
        assert r[i] == pytest.approx(float(_unit(feats[i]) @ mu / np.linalg.norm(mu)), abs=1e-12)


# -------------------------------------------------------------------------------------------- top-K per class
def test_top_per_class_by_hand():
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2])
    labels = np.array([0, 0, 0, 1, 1, 0, 2])
    keep = top_per_class(scores, labels, 2)
    assert np.flatnonzero(keep).tolist() == [0, 3, 4, 5, 6]  # class 0: 0.9, 0.8; class 1: both; class 2: one
    assert top_per_class(scores, labels, 0).sum() == 0
    assert np.flatnonzero(top_per_class(scores, labels, 1)).tolist() == [0, 3, 6]
    cand = np.array([False, True, True, True, True, False, False])
    assert np.flatnonzero(top_per_class(scores, labels, 1, cand)).tolist() == [2, 3]
    assert not top_per_class(scores, labels, 3, np.zeros(7, dtype=bool)).any()


def test_top_per_class_ties_are_stable():
    scores = np.array([0.5, 0.5, 0.5, 0.5])
    labels = np.array([1, 1, 1, 1])
    assert np.flatnonzero(top_per_class(scores, labels, 2)).tolist() == [0, 1]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 8, 100])
def test_select_representatives_min_k_count(seed, k):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, 60)
    scores = rng.random(60)
    keep = select_representatives(scores, labels, k)
    for c in range(6):
        members = np.flatnonzero(labels == c)
        assert keep[members].sum() == min(k, len(members))
        best = members[np.argsort(-scores[members], kind="stable")[:k]]
        assert set(np.flatnonzero(keep & (labels == c))) == set(best.tolist())


# ------------------------------------------------------------------------------------------------ prototypes
def test_prototypes_normalised_mean_of_kept():
    feats = np.array([[3.0, 0.0], [0.0, 1.0], [5.0, 5.0], [0.0, 2.0], [1.0, 0.0]])
    labels = np.array([0, 0, 0, 1, 2])
    kept = np.array([True, True, False, True, False])
    protos, has = prototypes(feats, labels, kept, 4)
    assert protos.shape == (4, 2) and has.tolist() == [True, True, False, False]
    np.testing.assert_allclose(protos[0], [2 ** -0.5, 2 ** -0.5], atol=1e-12)  # mean of (1,0),(0,1), normalised
    np.testing.assert_allclose(protos[1], [0.0, 1.0], atol=1e-12)
    np.testing.assert_array_equal(protos[2:], 0.0)


def test_prototypes_nothing_kept():
    feats = np.ones((3, 4))
    protos, has = prototypes(feats, np.array([0, 1, 1]), np.zeros(3, dtype=bool), 2)
    assert not has.any() and protos.shape == (2, 4) and (protos == 0).all()


def test_prototypes_random_against_loop():
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((30, 5))
    labels = rng.integers(0, 3, 30)
    kept = rng.random(30) < 0.5
    protos, has = prototypes(feats, labels, kept, 3)
    for c in range(3):
        sel = kept & (labels == c)
        assert has[c] == sel.any()
        np.testing.assert_allclose(protos[c], _unit(_unit(feats[sel]).mean(0)), atol=1e-12)


# ------------------------------------------------------------------------------------------------------- aux
def test_aux_probs_by_hand():
    img = _unit([[1.0, 0.0], [0.0, 1.0]])
    protos = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    has = np.array([True, True, False])
    p = aux_probs(img, protos, has, 5.0)
    np.testing.assert_allclose(p[:, 2], 0.0, atol=0)  # no prototype: no probability
    np.testing.assert_allclose(p[0, :2], _softmax_row([5.0, 0.0]), rtol=1e-12)
    np.testing.assert_allclose(p[1, :2], _softmax_row([0.0, 5.0]), rtol=1e-12)


def test_aux_probs_uniform_without_prototypes():
    img = _unit(np.random.default_rng(0).standard_normal((4, 3)))
    protos = np.zeros((5, 3))
    p = aux_probs(img, protos, np.zeros(5, dtype=bool), 100.0)
    assert p.shape == (4, 5)
    np.testing.assert_allclose(p, 0.2)
    mask = np.array([False, True, True, False, True])
    pm = aux_probs(img, protos, np.zeros(5, dtype=bool), 100.0, mask)
    np.testing.assert_allclose(pm, np.tile([0, 1 / 3, 1 / 3, 0, 1 / 3], (4, 1)))
    pm[0, 0] = 9  # a writable copy, not a broadcast view
    # prototypes only outside the mask: uniform over the mask
    has = np.array([True, False, False, True, False])
    np.testing.assert_allclose(aux_probs(img, np.eye(5, 3), has, 100.0, mask)[:, 1], 1 / 3)


def test_aux_probs_with_class_mask():
    img = _unit([[1.0, 0.2]])
    protos = _unit([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    p = aux_probs(img, protos, np.ones(3, dtype=bool), 10.0, np.array([False, True, True]))
    assert p[0, 0] == 0.0
    logits = 10.0 * (img @ protos.T)[0]
    np.testing.assert_allclose(p[0, 1:], _softmax_row(logits[1:].tolist()), rtol=1e-12)


# ------------------------------------------------------------------------------------------------------ fusion
def test_fuse_by_hand():
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    p_hat = np.array([[0.1, 0.8, 0.1], [0.6, 0.2, 0.2]])
    np.testing.assert_allclose(fuse(p, p_hat, 1.0), [[0.3, 0.55, 0.15], [0.35, 0.15, 0.5]], atol=1e-15)
    # λ = 3: (p + 3 p̂) / 4
    np.testing.assert_allclose(fuse(p, p_hat, 3.0), [[0.2, 0.675, 0.125], [0.475, 0.175, 0.35]], atol=1e-15)
    np.testing.assert_array_equal(fuse(p, p_hat, 0.0), p)  # λ = 0: the text classifier alone
    f = fuse(p, p_hat, 0.7)
    np.testing.assert_allclose(f.sum(1), 1.0)


# --------------------------------------------------------------------------------------------- pseudo-labels
def _upl_reference(probs, candidates, k):
    """The UPL rule written plainly: argmax class, then the k most confident per class, each image once."""
    n, c = probs.shape
    selected = [False] * n
    labels = [-1] * n
    for cls in range(c):
        members = [i for i in range(n) if candidates[i] and int(np.argmax(probs[i])) == cls]
        members.sort(key=lambda i: (-float(probs[i].max()), i))
        for i in members[:k]:
            assert not selected[i]
            selected[i] = True
            labels[i] = cls
    return np.array(selected), np.array(labels)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 2, 5, 16])
def test_topk_matches_reference(seed, k):
    rng = np.random.default_rng(seed)
    n, c = 80, 6
    logits = rng.standard_normal((n, c)) * 3
    logits[:, 5] -= 4  # class 5 rarely wins: it is under-filled
    probs = masked_softmax(logits)
    candidates = rng.random(n) < 0.8
    sel = select_pseudolabels(probs, candidates, "topk", k)
    assert isinstance(sel, Selection)
    ref_sel, ref_lab = _upl_reference(probs, candidates, k)
    np.testing.assert_array_equal(sel.selected, ref_sel)
    np.testing.assert_array_equal(sel.labels, ref_lab)
    # invariants of the rule
    assert not sel.selected[~candidates].any()
    assert (sel.labels[~sel.selected] == -1).all()
    np.testing.assert_array_equal(sel.labels[sel.selected], probs[sel.selected].argmax(1))
    for cls in range(c):
        hits = (candidates & (probs.argmax(1) == cls)).sum()
        assert (sel.labels == cls).sum() == min(k, hits)


def test_topk_by_hand_underfilled_class():
    probs = np.array([
        [0.9, 0.05, 0.05],  # 0
        [0.6, 0.3, 0.1],    # 0
        [0.7, 0.2, 0.1],    # 0
        [0.2, 0.7, 0.1],    # 1
        [0.45, 0.5, 0.05],  # 1, but not a candidate
        [0.3, 0.3, 0.4],    # 2
    ])
    cand = np.array([True, True, True, True, False, True])
    sel = select_pseudolabels(probs, cand, "topk", 2)
    assert sel.selected.tolist() == [True, False, True, True, False, True]
    assert sel.labels.tolist() == [0, -1, 0, 1, -1, 2]
    # 'grip' and 'fixed' use the same rule with their budget
    for rule in ("grip", "fixed"):
        np.testing.assert_array_equal(select_pseudolabels(probs, cand, rule, 2).labels, sel.labels)


def test_all_rule():
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6]])
    cand = np.array([True, False, True])
    sel = select_pseudolabels(probs, cand, "all", 1)  # k is ignored
    assert sel.selected.tolist() == [True, False, True]
    assert sel.labels.tolist() == [1, -1, 1]
    assert sel.selected is not cand  # the caller's mask is not aliased


# ---------------------------------------------------------------------------------------------------- GRIP budget
def test_grip_budget_by_hand():
    # N_U = 1000, C' = 10, q = 100: k_i = 10 i, capped at 100
    assert [grip_budget(i, 1000, 10) for i in range(12)] == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 100]
    # N_U = 57, C' = 4: q = 5, k_i = floor(5 i / 4), cap floor(57/4) = 14
    assert [grip_budget(i, 57, 4) for i in range(1, 13)] == [1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 14]
    assert grip_budget(3, 100, 0) == 0
    assert grip_budget(5, 9, 3) == 0  # q = floor(0.9) = 0


def test_grip_budget_formula_grid():
    for n in (0, 1, 9, 10, 37, 99, 101, 1234, 10_000):
        for c in (1, 2, 3, 7, 45, 102):
            for i in range(0, 12):
                q = math.floor(0.1 * n)
                assert grip_budget(i, n, c) == min(math.floor(i * q / c), math.floor(n / c)), (i, n, c)


def test_grip_budget_step():
    assert grip_budget(2, 100, 5, step=0.25) == 10  # q = 25: floor(50 / 5)
    assert grip_budget(9, 100, 5, step=0.25) == 20  # capped at floor(100 / 5)
