"""The worked example (``bnmat demo``): agrees when right, says FAIL when wrong."""

import io

import numpy as np
import pytest

from bnmat import demo, ops
from bnmat.ops.batchnorm import BatchNormGrads


def test_demo_agrees_and_exits_zero():
    out = io.StringIO()
    assert demo.run_demo(out) == 0
    text = out.getvalue()
    for label in ("∂R/∂β", "∂R/∂γ", "∂R/∂Γ1", "∂R/∂Γ2", "misses by", "OK:"):
        assert label in text


def test_demo_relu_inputs_are_away_from_the_kink():
    theta = demo.demo_problem()
    z = theta["x"] @ theta["gamma1"]
    b, _ = ops.batchnorm_forward(z, theta["gamma"], theta["beta"], eps=0.0, ddof=1)
    assert np.min(np.abs(b)) > 1e-3


def test_every_wrong_derivation_misses_clearly():
    theta = demo.demo_problem()
    numeric = demo.numerical_grads(theta)
    for title, (name, wrong) in demo.wrong_grads(theta).items():
        miss = np.max(np.abs(wrong - numeric[name])) / np.max(np.abs(numeric[name]))
        assert miss > 0.05, title


def test_demo_reports_failure_for_a_wrong_backward(monkeypatch):
    def constant_stats_backward(dy, cache):
        # Pitfall 1: μ and σ treated as constants.
        return BatchNormGrads(
            dx=dy * (cache.gamma * cache.inv_std),
            dgamma=np.sum(dy * cache.x_hat, axis=0),
            dbeta=np.sum(dy, axis=0),
        )

    monkeypatch.setattr(ops, "batchnorm_backward", constant_stats_backward)
    out = io.StringIO()
    assert demo.run_demo(out) == 1
    assert "FAIL" in out.getvalue()
