"""The adaptive-batch frontier quantities (rlscale.adaptive) on known answers."""

import math

import numpy as np
import pytest

from rlscale.adaptive import predicted_gamma


def test_a_constant_noise_scale_gives_gamma_one():
    assert predicted_gamma(np.full(50, 300.0), np.full(50, 64.0)) == pytest.approx(1.0)
    assert predicted_gamma(np.full(5, 300.0), np.array([64, 128, 256, 512, 1024.0])) == pytest.approx(1.0)


def test_gamma_of_a_two_phase_history_by_hand():
    # b = 100 then 400, B tracking b: ds = 1/2 each iteration, so
    # gamma = ((10 + 20) / 2)^2 / ((1/2 + 1/2) (100/2 + 400/2)) = 225 / 250 = 0.9
    assert predicted_gamma(np.array([100.0, 400.0]), np.array([100.0, 400.0])) == pytest.approx(0.9)
    # undefined estimates (warm-up, |G|^2 unresolved) are left out
    assert predicted_gamma(np.array([math.nan, 100.0, -5.0, 400.0]), np.array([64, 100, 64, 400.0])) == pytest.approx(0.9)
    assert math.isnan(predicted_gamma(np.array([math.nan, -1.0]), np.array([64, 64.0])))


def test_gamma_never_exceeds_one():
    rng = np.random.default_rng(0)
    for _ in range(20):
        b = np.exp(rng.normal(5, 2, size=30))
        assert predicted_gamma(b, np.exp(rng.normal(5, 1, size=30))) <= 1 + 1e-12
