"""``bnmat demo --second-order``: agrees when right, says FAIL when the curvature is wrong."""

import io

import numpy as np

from bnmat import cli, demo, ops


def test_second_order_demo_agrees_and_exits_zero(capsys):
    out = io.StringIO()
    assert demo.run_second_order_demo(out) == 0
    text = out.getvalue()
    for label in ("closed form", "differences", "torch", "Γ1[0]", "γ[3]", "Γ2[3]", "OK:"):
        assert label in text
    assert cli.main(["demo", "--second-order"]) == 0
    assert "H v" in capsys.readouterr().out


def test_second_order_demo_reports_a_wrong_double_backward(monkeypatch):
    right = ops.batchnorm_double_backward

    def without_statistics_terms(ddx, ddgamma, ddbeta, dy, cache):
        out = right(ddx, ddgamma, ddbeta, dy, cache)
        return out._replace(dx=np.zeros_like(out.dx))

    monkeypatch.setattr(ops, "batchnorm_double_backward", without_statistics_terms)
    out = io.StringIO()
    assert demo.run_second_order_demo(out) == 1
    assert "FAIL" in out.getvalue()
