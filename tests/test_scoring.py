"""Tests of salgan.scoring on a small synthetic split."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from salgan import metrics as m
from salgan import scoring
from salgan.scoring import fixation_density_baseline, score_split

SHAPE = (48, 64)
N_IMAGES = 6


def make_split(seed=0):
    """Six images: fixations in an image-specific blob plus a shared centre bias; GT = blurred counts."""
    rng = np.random.default_rng(seed)
    coords, offsets, gts = [], [0], []
    for i in range(N_IMAGES):
        centre = np.array([8 + 5 * i, 10 + 8 * i])
        blob = centre + rng.normal(0, 2.5, (25, 2))
        bias = np.array(SHAPE) / 2 + rng.normal(0, 6, (10, 2))
        pts = np.clip(np.vstack([blob, bias]), 0, np.array(SHAPE) - 1).astype(np.int32)
        coords.append(pts)
        offsets.append(offsets[-1] + len(pts))
        gt = gaussian_filter(m.fixation_map_from_coords(pts, SHAPE).astype(float), 3)
        gts.append(np.round(255 * gt / gt.max()).astype(np.uint8))
    return np.vstack(coords), np.array(offsets, dtype=np.int64), np.stack(gts)


def score(predictions, **kwargs):
    coords, offsets, gts = make_split()
    baseline = fixation_density_baseline(coords, offsets, SHAPE, sigma=5)
    kwargs.setdefault("progress", False)
    return score_split(predictions, gts, coords, offsets, baseline, n_splits=20, **kwargs)


def test_rows_and_means():
    _, _, gts = make_split()
    names = [f"img{i}" for i in range(N_IMAGES)]
    rows, means = score(gts, names=names)
    assert len(rows) == N_IMAGES
    assert [row["name"] for row in rows] == names
    assert [row["index"] for row in rows] == list(range(N_IMAGES))
    assert all(row["n_fixations"] == 35 for row in rows)
    assert set(means) == set(m.METRIC_NAMES)
    for key in m.METRIC_NAMES:
        assert means[key] == pytest.approx(np.mean([row[key] for row in rows]))
        assert all(np.isfinite(row[key]) for row in rows)


def test_rows_match_the_public_metric_functions():
    coords, offsets, gts = make_split()
    baseline = fixation_density_baseline(coords, offsets, SHAPE, sigma=5)
    rng = np.random.default_rng(1)
    predictions = [rng.random((24, 32)) for _ in range(N_IMAGES)]  # resized to 48x64 by the scorer
    rows, _ = score_split(
        predictions, gts, coords, offsets, baseline, n_splits=20, sauc_other_images=2, seed=7, progress=False
    )
    i = 4
    f = m.fixation_map_from_coords(coords[offsets[i] : offsets[i + 1]], SHAPE)
    others = [5, 0]  # the next two images, cyclically
    other = sum(m.fixation_map_from_coords(coords[offsets[j] : offsets[j + 1]], SHAPE) for j in others)
    s, q = predictions[i], gts[i]
    expected = {
        "auc_judd": m.auc_judd(s, f),
        "auc_borji": m.auc_borji(s, f, n_splits=20, seed=[7, i, 0]),
        "auc_shuffled": m.auc_shuffled(s, f, other, n_splits=20, seed=[7, i, 1]),
        "nss": m.nss(s, f),
        "cc": m.cc(s, q),
        "kld": m.kld(s, q),
        "sim": m.sim(s, q),
        "information_gain": m.information_gain(s, f, baseline),
    }
    assert {key: rows[i][key] for key in expected} == pytest.approx(expected, abs=1e-12)


def test_perfect_prediction_beats_centre_bias():
    _, _, gts = make_split()
    perfect, _ = score(gts)
    centre, _ = score(np.stack([m.center_bias_map(SHAPE, 0.15)] * N_IMAGES))
    for key in ("nss", "cc", "auc_judd", "auc_shuffled", "sim"):
        assert np.mean([r[key] for r in perfect]) > np.mean([r[key] for r in centre]), key
    assert all(p["nss"] > c["nss"] and p["cc"] > c["cc"] for p, c in zip(perfect, centre, strict=True))


def test_seed_controls_the_sampled_metrics():
    _, _, gts = make_split()
    a, _ = score(gts, seed=0)
    b, _ = score(gts, seed=0)
    c, _ = score(gts, seed=1)
    assert a == b
    assert [r["auc_borji"] for r in a] != [r["auc_borji"] for r in c]
    assert [r["nss"] for r in a] == [r["nss"] for r in c]


def test_errors_name_the_image():
    coords, offsets, gts = make_split()
    baseline = fixation_density_baseline(coords, offsets, SHAPE, sigma=5)
    # Image 2 loses its fixations.
    keep = np.r_[0 : offsets[2], offsets[3] : len(coords)]
    holes = offsets.copy()
    holes[3:] -= offsets[3] - offsets[2]
    with pytest.raises(ValueError, match=r"image 2 \(c\).*no fixations"):
        score_split(gts, gts, coords[keep], holes, baseline, names=list("abcdef"), progress=False)
    bad = gts.astype(float)
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"image 1: prediction: .*NaN"):
        score_split(bad, gts, coords, offsets, baseline, progress=False)
    with pytest.raises(ValueError, match="predictions"):
        score_split(gts[:5], gts, coords, offsets, baseline, progress=False)
    with pytest.raises(ValueError, match="at least 2 images"):
        score_split(gts[:1], gts[:1], coords[: offsets[1]], offsets[:2], baseline, progress=False)
    with pytest.raises(ValueError, match="outside"):
        score_split(gts, gts, coords + 100, offsets, baseline, progress=False)


def test_fixation_density_baseline():
    coords = np.array([[0, 0], [1, 1], [1, 1], [3, 2]], dtype=np.int32)
    offsets = np.array([0, 3, 4])
    density = fixation_density_baseline(coords, offsets, (4, 3), sigma=0)
    assert density.sum() == pytest.approx(1.0)
    assert density[1, 1] == pytest.approx(0.5)
    assert density[3, 2] == pytest.approx(0.25)
    # Image 1 was recorded at 8x6: its (3, 2) lands on (1, 1) of the 4x3 baseline.
    rescaled = fixation_density_baseline(coords, offsets, (4, 3), 0, original_sizes=[[4, 3], [8, 6]])
    assert rescaled[1, 1] == pytest.approx(0.75)
    blurred = fixation_density_baseline(coords, offsets, (40, 30), sigma=3)
    assert blurred.sum() == pytest.approx(1.0)
    assert blurred[1, 1] > blurred[10, 10] > blurred[30, 25]
    with pytest.raises(ValueError, match="no fixations"):
        fixation_density_baseline(np.zeros((0, 2), np.int32), np.array([0, 0]), (4, 3), 1)


def random_split(n_images: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, 30, n_images)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    coords = np.stack([rng.integers(0, SHAPE[0], offsets[-1]), rng.integers(0, SHAPE[1], offsets[-1])], axis=1)
    gts = np.stack(
        [
            np.round(255 * gaussian_filter(m.fixation_map_from_coords(coords[a:b], SHAPE).astype(float), 3) ** 0.5)
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]
    ).astype(np.uint8)
    predictions = [gaussian_filter(rng.random((24, 32)), 1).astype(np.float32) for _ in range(n_images)]
    return predictions, gts, coords.astype(np.int32), offsets


class InOrder(list):
    """A list that records which items were asked for, as BatchedPredictions would predict them."""

    def __init__(self, items):
        super().__init__(items)
        self.asked: list[int] = []

    def __getitem__(self, index):
        self.asked.append(index)
        return super().__getitem__(index)


def test_worker_pool_gives_the_rows_of_one_process(monkeypatch):
    predictions, gts, coords, offsets = random_split(21)  # three chunks of 8
    baseline = fixation_density_baseline(coords, offsets, SHAPE, sigma=5)
    names = [f"img{i}" for i in range(21)]
    pools, real = [], scoring._Workers
    monkeypatch.setattr(scoring, "_Workers", lambda workers, split: pools.append(workers) or real(workers, split))
    ordered = InOrder(predictions)
    one = score_split(predictions, gts, coords, offsets, baseline, n_splits=20, progress=False, names=names, workers=1)
    two = score_split(ordered, gts, coords, offsets, baseline, n_splits=20, progress=False, names=names, workers=2)
    assert pools == [2]  # only the second call used a pool, of two processes
    assert two == one  # every row, bit for bit, in order
    assert ordered.asked == list(range(21))  # each map read once, in order
    assert [row["name"] for row in two[0]] == names


def test_worker_pool_names_the_image_that_fails():
    predictions, gts, coords, offsets = random_split(21)
    baseline = fixation_density_baseline(coords, offsets, SHAPE, sigma=5)
    keep = np.r_[0 : offsets[13], offsets[14] : len(coords)]  # image 13 loses its fixations
    holes = offsets.copy()
    holes[14:] -= offsets[14] - offsets[13]
    names = [f"img{i}" for i in range(21)]
    with pytest.raises(ValueError, match=r"image 13 \(img13\): fixations: no fixations"):
        score_split(predictions, gts, coords[keep], holes, baseline, names=names, progress=False, workers=2)
    with pytest.raises(ValueError, match="workers"):
        score_split(predictions, gts, coords, offsets, baseline, progress=False, workers=0)


def test_sauc_negatives_are_the_union_of_the_next_images_fixations():
    """Read as one or two runs of the fixations (wrapping past the last image), the negatives are the
    distinct locations of the k images after i, images without fixations and k >= N included."""
    rng = np.random.default_rng(3)
    counts = np.array([3, 0, 4, 1, 0, 5, 2])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    flat = rng.integers(0, 6, offsets[-1])  # few locations: repeats within and across images
    n_images = counts.size
    for i in range(n_images):
        for k in (1, 2, 3, n_images - 1, n_images + 5):
            others = [(i + d) % n_images for d in range(1, min(k, n_images - 1) + 1)]
            union = sorted({int(v) for j in others for v in flat[offsets[j] : offsets[j + 1]]})
            assert scoring._sauc_negatives(i, flat, offsets, k).tolist() == union, (i, k)
