"""Shared test fixtures."""

import warnings

import pytest

import jaxrf


@pytest.fixture
def both_sides():
    """``(fn, x, positions) -> (rf, analytic, structural)``: the clipped analytic regions and the
    structural boxes of ``fn`` at ``positions`` (misalignment warnings silenced)."""

    def boxes(fn, x, positions):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jaxrf.MisalignmentWarning)
            rf = jaxrf.receptive_field(fn, x)
        analytic = [rf.region(p, clip=True) for p in positions]
        structural = [
            jaxrf.actual_receptive_field(fn, x, p, mode="structural").box for p in positions
        ]
        return rf, analytic, structural

    return boxes
