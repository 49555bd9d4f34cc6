"""tools/heldout_check.py: the high-precision oracle passes the ops and fails a wrong backward."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpmath")

from bnmat import ops
from bnmat.ops.batchnorm import BatchNormGrads

TOOL = Path(__file__).resolve().parents[1] / "tools" / "heldout_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("heldout_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_heldout_oracle_accepts_the_ops(capsys):
    assert _load().main(["--seed", "4242", "--rows", "5", "--cols", "2"]) == 0
    assert "OK" in capsys.readouterr().out


def test_heldout_oracle_rejects_a_wrong_backward(monkeypatch, capsys):
    tool = _load()
    right = ops.batchnorm_backward

    def wrong_divisor(dy, cache):   # divides the projection term by N whatever ddof is
        n = cache.x_hat.shape[0]
        grads = right(dy, cache)
        fix = cache.x_hat * grads.dgamma * (1 / n - 1 / (n - cache.ddof))
        return BatchNormGrads(grads.dx + fix * cache.gamma * cache.inv_std,
                              grads.dgamma, grads.dbeta)

    monkeypatch.setattr(tool.ops, "batchnorm_backward", wrong_divisor)
    assert tool.main(["--seed", "4242", "--rows", "5", "--cols", "2"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and np.isfinite(float(out.split("largest ")[1].split(",")[0]))
