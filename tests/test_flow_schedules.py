"""Schedules against the formulas worked out by hand (DESIGN.md, seed 001 section 4)."""
import math

import pytest
import torch
from torch.testing import assert_close

from core.flow.schedules import (flow_sigmas, shift_sigma, sigma_curve, training_table,
                                 weight_curve)


def test_shift_by_hand():
    # k s / (1 + (k - 1) s) with k = 5: s = 0.75 -> 3.75 / 4 = 0.9375; s = 0.5 -> 2.5 / 3.
    assert shift_sigma(0.75, 5.0) == pytest.approx(0.9375, abs=1e-15)
    assert shift_sigma(0.5, 5.0) == pytest.approx(2.5 / 3.0, abs=1e-15)
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert_close(shift_sigma(s, 1.0), s, rtol=0, atol=1e-15)  # k = 1 is the identity
    assert shift_sigma(0.0, 3.0) == 0.0 and shift_sigma(1.0, 3.0) == 1.0


def test_four_steps_shift_five_by_hand():
    # linspace(1, 0, 5)[:4] = [1, .75, .5, .25] -> shifted [1, 0.9375, 0.8333.., 0.625], then 0.
    expected = torch.tensor([1.0, 0.9375, 2.5 / 3.0, 0.625, 0.0], dtype=torch.float64)
    got = flow_sigmas(4, shift=5.0)
    assert got.dtype == torch.float64
    assert_close(got, expected, rtol=0, atol=1e-15)
    assert got[-1].item() == 0.0


def test_plain_linear_and_dtype():
    assert_close(flow_sigmas(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64),
                 rtol=0, atol=1e-15)
    assert flow_sigmas(3, dtype=torch.float32).dtype == torch.float32


def test_denoise_starts_at_shifted_strength():
    # d = 0.5, 2 steps, shift 3: linspace(0.5, 0, 3)[:2] = [0.5, 0.25] -> [1.5/2, 0.75/1.5] = [0.75, 0.5].
    assert_close(flow_sigmas(2, shift=3.0, denoise=0.5),
                 torch.tensor([0.75, 0.5, 0.0], dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("bad", [dict(steps=0), dict(steps=4, shift=0.0), dict(steps=4, denoise=0.0),
                                 dict(steps=4, denoise=1.5), dict(steps=2.5)])
def test_bad_arguments_name_the_value(bad):
    with pytest.raises(ValueError):
        flow_sigmas(**bad)


def test_training_table_and_weights():
    table = training_table()  # 1000 entries, shift 5 (DiffSynth's Wan default)
    assert table.sigmas.shape == (1000,) and table.weights.shape == (1000,)
    assert table.sigmas[0].item() == 1.0 and table.sigmas[-1].item() > 0.0  # no final 0
    # entry i: shift(1 - i/1000); e.g. i = 500 -> shift(0.5) = 5/6
    assert table.sigmas[500].item() == pytest.approx(5.0 / 6.0, abs=1e-15)
    assert_close(table.timesteps, 1000.0 * table.sigmas)
    assert table.weights.sum().item() == pytest.approx(1000.0, abs=1e-9)
    assert table.weights.min().item() == 0.0  # shifted to min 0
    # the bell peaks where t = 500 (sigma = 1/2), i.e. the entry whose timestep is nearest 500
    peak = int(table.weights.argmax())
    assert int((table.timesteps - 500).abs().argmin()) == peak
    # by hand at t = 1000 (sigma = 1): y = exp(-2 * 0.25) = exp(-0.5); y at the peak is ~1
    y_min = math.exp(-2 * ((table.timesteps.max().item() - 500) / 1000) ** 2)
    y = torch.exp(-2 * ((table.timesteps - 500) / 1000) ** 2)
    assert y.min().item() == pytest.approx(y_min)
    assert_close(table.weights, (y - y.min()) * 1000 / (y - y.min()).sum())
    assert_close(table.weight_at(torch.tensor([table.timesteps[peak].item()])), table.weights[peak:peak + 1])


def test_curves_are_plain_data():
    curve = sigma_curve(flow_sigmas(4, shift=5.0))
    assert curve["sigma"][1] == pytest.approx(0.9375) and curve["timestep"][1] == pytest.approx(937.5)
    assert all(isinstance(v, float) for v in curve["sigma"] + curve["step"] + curve["timestep"])
    w = weight_curve(training_table(10, shift=1.0))
    assert len(w["weight"]) == 10 and sum(w["weight"]) == pytest.approx(10.0)
