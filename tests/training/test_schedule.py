"""The LR schedule against its formulas, written out independently here."""

import math

import pytest

from training.schedule import lr_at

LR = 2e-4


def test_constant_is_constant_after_linear_warmup():
    got = [lr_at(s, lr=LR, warmup_steps=4, max_steps=10, schedule="constant") for s in range(10)]
    assert got[:4] == pytest.approx([LR * 1 / 4, LR * 2 / 4, LR * 3 / 4, LR])  # step 0 already moves
    assert got[4:] == [LR] * 6


@pytest.mark.parametrize("min_ratio", [0.0, 0.1])
def test_cosine_follows_half_cosine_from_peak_to_floor(min_ratio):
    warm, total = 2, 12
    for s in range(warm, total + 1):
        p = (s - warm) / (total - warm)
        want = LR * (min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * p)) / 2)
        assert lr_at(s, lr=LR, warmup_steps=warm, max_steps=total, schedule="cosine",
                     min_lr_ratio=min_ratio) == pytest.approx(want, rel=1e-12)
    assert lr_at(warm, lr=LR, warmup_steps=warm, max_steps=total, schedule="cosine") == pytest.approx(LR)
    # Past max_steps (a resumed run with a longer budget): held at the floor, never rising again.
    assert lr_at(total + 5, lr=LR, warmup_steps=warm, max_steps=total, schedule="cosine",
                 min_lr_ratio=min_ratio) == pytest.approx(LR * min_ratio, abs=1e-18)


def test_linear_decays_to_the_floor():
    got = [lr_at(s, lr=1.0, warmup_steps=0, max_steps=4, schedule="linear", min_lr_ratio=0.2)
           for s in range(5)]
    assert got == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


def test_warmup_longer_than_the_run_does_not_divide_by_zero():
    assert lr_at(3, lr=LR, warmup_steps=3, max_steps=3, schedule="cosine") == pytest.approx(LR)
