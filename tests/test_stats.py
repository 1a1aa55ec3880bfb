"""ERF statistics against hand-computed values; thresholds never reached are reported."""

import math

import numpy as np
import pytest

import jaxrf


def test_luo_size_centre_and_max_reference():
    m = np.zeros((5, 5))
    m[2, 2] = 100
    m[1:4, 1:4] += 10  # 9 pixels at >= 10 > 4.55
    m[0, 0] = 4  # below 0.0455 * 110 = 5.005
    got = jaxrf.luo_size(m)
    assert got.count == 9 and got.size == 3.0 and got.reached
    assert got.threshold == pytest.approx((1 - 0.9545) * 110)
    m2 = m.copy()
    m2[4, 4] = 1000  # with the max as reference the threshold is 45.5: only 2 pixels exceed
    assert jaxrf.luo_size(m2, reference="max").count == 2
    assert jaxrf.luo_size(m2, center=(2, 2)).count == 10


def test_luo_size_zero_centre_not_reached():
    got = jaxrf.luo_size(np.array([1.0, 0.0, 1.0]))
    assert got.size is None and not got.reached


def test_std_and_centroid():
    m = np.zeros((3, 7))
    m[1, 1:4] = 1  # uniform over columns 1..3: variance 2/3, mean 2
    assert jaxrf.erf_std(m) == pytest.approx((0.0, math.sqrt(2 / 3)))
    assert jaxrf.centroid(m) == pytest.approx((1.0, 2.0))
    assert jaxrf.centroid_offset(m, (1, 3)) == pytest.approx((0.0, -1.0))
    assert jaxrf.centroid([[-1, 0, 3]], values="signed") == pytest.approx((0.0, 3.0))
    assert jaxrf.centroid([[-1, 0, 3]], values="positive") == pytest.approx((0.0, 2.0))


def test_area_ratio_replknet_protocol():
    m = np.zeros((9, 9))
    m[4, 4] = 9  # log10(9 + 1) = 1
    r = jaxrf.area_ratio(m)
    assert r.sides == (3, 3, 3, 3) and r.ratios[0] == pytest.approx(9 / 81)
    flat = np.ones((8, 8))  # squares of side 3, 5, 7 hold 9, 25, 49 of 64
    r = jaxrf.area_ratio(flat, (0.2, 0.5, 0.99), log=False)
    assert r.sides == (5, 7, None) and r.reached == (True, True, False)
    assert r.ratios == (25 / 64, 49 / 64, None)


def test_area_ratio_log_changes_answer():
    m = np.zeros((9, 9))
    m[4, 4] = 99  # log10(100) = 2
    m[0, :] = 1  # 9 pixels of log10(2) = 0.301 each, outside every tried square
    assert jaxrf.area_ratio(m, (0.5,), log=False).sides == (3,)  # 99 / 108 > 0.5
    # log: total = 2 + 9 * 0.30103 = 4.709; every tried square (rows 1..7 at most) holds 2:
    # 0.42 of the total, never more than 0.5.
    r = jaxrf.area_ratio(m, (0.4, 0.5), log=True)
    assert r.sides == (3, None) and r.reached == (True, False)


def test_share_inside_and_errors():
    assert jaxrf.share_inside([[1, 2], [3, 4]], [(0, 0), (0, 1)]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="needs 2"):
        jaxrf.share_inside([[1, 2]], [(0, 0)])
    with pytest.raises(ValueError, match=r"`values` \(='sq'\)"):
        jaxrf.erf_std([1, 2], values="sq")
    with pytest.raises(ValueError, match="sums to zero"):
        jaxrf.centroid([0, 0])
    with pytest.raises(ValueError, match="threshold 20"):
        jaxrf.area_ratio([[1.0]], (20,))
