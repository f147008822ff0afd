"""The ablation's paired bootstrap (salgan/bootstrap.py) on synthetic per-image scores."""

import numpy as np
import pytest

from salgan.bootstrap import Interval, paired_bootstrap


def synthetic(difference: float, seeds: int = 3, images: int = 200, seed: int = 0):
    """Two arms scored on the same images: a shared per-image difficulty (large, cancelled by pairing), a
    per-seed offset and per-(seed, image) noise (small), and ``difference`` added to the arm."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(2.0, 1.0, size=images)

    def arm(shift: float):
        return difficulty + shift + rng.normal(0, 0.03, size=(seeds, 1)) + rng.normal(0, 0.2, size=(seeds, images))

    return arm(difference), arm(0.0)


def test_the_interval_covers_a_known_difference_and_excludes_zero():
    arm, reference = synthetic(0.15)
    found = paired_bootstrap(arm, reference)
    assert found.low < 0.15 < found.high and found.excludes_zero
    assert found.difference == pytest.approx(arm.mean() - reference.mean())
    assert found.high - found.low < 0.15  # the pairing cancels the images' difficulty (sd 1.0 alone: ~0.3 wide)


def test_with_no_difference_the_interval_covers_zero():
    arm, reference = synthetic(0.0, seed=1)
    found = paired_bootstrap(arm, reference)
    assert found.low < 0 < found.high and not found.excludes_zero


def test_the_interval_is_reproducible_and_widens_when_the_seeds_disagree():
    arm, reference = synthetic(0.1, seed=2)
    assert paired_bootstrap(arm, reference) == paired_bootstrap(arm, reference)
    spread = arm + np.array([[-0.3], [0.0], [0.3]])  # the same mean, seeds far apart
    calm, noisy = paired_bootstrap(arm, reference), paired_bootstrap(spread, reference)
    assert noisy.high - noisy.low > 2 * (calm.high - calm.low)


def test_one_seed_per_arm_resamples_the_images_only():
    """With one seed the interval is the plain paired bootstrap of the per-image differences: its width
    is about 2 x 1.96 x their standard error."""
    rng = np.random.default_rng(3)
    differences = rng.normal(0.5, 1.0, size=400)
    found = paired_bootstrap(differences, np.zeros(400))
    standard_error = differences.std(ddof=1) / np.sqrt(400)
    assert found.high - found.low == pytest.approx(2 * 1.96 * standard_error, rel=0.1)
    assert found.low < differences.mean() < found.high


def test_arms_must_score_the_same_images():
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(np.zeros((2, 5)), np.zeros((2, 6)))
    assert Interval(0.1, -0.2, 0.3).excludes_zero is False and Interval(-0.4, -0.5, -0.1).excludes_zero
