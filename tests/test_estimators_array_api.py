"""BNMLPRegressor and BNMLPClassifier in other array libraries (scikit-learn's array_api_dispatch).

With ``sklearn.config_context(array_api_dispatch=True)`` the estimators train
in X's library (array_api_strict, torch CPU tensors here; any device): every
fitted array lives there, predictions come back there, and in float64 the
model equals the NumPy estimator's with the same ``random_state`` to 1e-12 —
the defaults included (early stopping on held-out rows, the ridge fallback,
``batch_size="auto"``). array_api_strict on its second device (``device1``)
stands in for a GPU: an array left on the default device is an error there.

scikit-learn refuses ``array_api_dispatch=True`` unless ``SCIPY_ARRAY_API=1``
is set; the fixture sets it for the test only (SciPy never sees an array of
another library on this path: L-BFGS gets NumPy vectors, RidgeCV host copies).
The last test runs scikit-learn's own array-API checks in a fresh interpreter
where the variable is set before SciPy is imported, as a user would.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
array_api_strict = pytest.importorskip("array_api_strict")

from bnmat import BNMLPClassifier, BNMLPRegressor  # noqa: E402
from bnmat._array_api import to_numpy  # noqa: E402
from bnmat.optim import tree_leaves  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

NAMESPACES = ["array_api_strict", "strict_device1"]
try:
    import torch

    NAMESPACES.append("torch")
except ImportError:  # pragma: no cover - torch is a test dependency
    torch = None


def _convert(name, a):
    if name == "array_api_strict":
        return array_api_strict.asarray(a)
    if name == "strict_device1":
        return array_api_strict.asarray(a, device=array_api_strict.Device("device1"))
    return torch.asarray(a)


def _in_library(name, a) -> bool:
    if name == "torch":
        return isinstance(a, torch.Tensor)
    if not type(a).__module__.startswith("array_api_strict"):
        return False
    return name == "array_api_strict" or a.device == array_api_strict.Device("device1")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # These fits are small (a few hundred rows): torch's thread pool only adds
    # synchronization, which on a busy machine costs 10-70x (measured on 2
    # shared cores). The numbers do not depend on it.
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def dispatch(monkeypatch):
    """scikit-learn's array_api_dispatch=True for one test."""
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    with sklearn.config_context(array_api_dispatch=True):
        yield


def _regression(n=120, p=4, seed=0, linear=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    signal = X @ np.arange(1.0, p + 1) if linear else np.sin(2 * X[:, 0]) + X[:, 1] ** 2
    return X, signal + 0.1 * rng.normal(size=n)


def _labels(X):
    return (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.8)


def _close(a, b, rtol, what):
    a = to_numpy(a).astype(np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, what
    scale = max(float(np.max(np.abs(b))), 1.0) if b.size else 1.0
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale, err_msg=what)


def assert_same_model(model, ref, name, rtol=1e-12):
    """``model`` (fitted in library ``name``) equals the NumPy ``ref``: state and history."""
    leaves, ref_leaves = tree_leaves((model.params_, model.state_)), tree_leaves(
        (ref.params_, ref.state_))
    assert len(leaves) == len(ref_leaves) > 0
    for i, (a, b) in enumerate(zip(leaves, ref_leaves)):
        assert _in_library(name, a), f"leaf {i} left the library: {type(a)}"
        _close(a, b, rtol, f"leaf {i}")
    for attr in ("x_scaling_", "y_scaling_"):
        if hasattr(ref, attr):
            for a, b in zip(getattr(model, attr), getattr(ref, attr)):
                assert _in_library(name, a), attr
                _close(a, b, rtol, attr)
    assert model.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(model.loss_curve_, ref.loss_curve_, rtol=rtol, atol=0)
    if ref.validation_scores_ is None:
        assert model.validation_scores_ is None
    else:
        np.testing.assert_allclose(model.validation_scores_, ref.validation_scores_,
                                   rtol=0, atol=rtol * 10)
    assert getattr(model, "selected_", None) == getattr(ref, "selected_", None)
    assert model.solver_ == ref.solver_


# ------------------------------------------------------------------ regressor

@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("linear", [False, True])
def test_regressor_defaults_equal_numpy(dispatch, name, linear):
    # The defaults: adam, batch_size="auto", early stopping on held-out rows and
    # the ridge fallback, which keeps the network on the curved target and the
    # ridge fit on the linear one (both branches, in every library).
    X, y = _regression(linear=linear)
    with sklearn.config_context(array_api_dispatch=False):
        ref = BNMLPRegressor(random_state=0).fit(X, y)
    model = BNMLPRegressor(random_state=0).fit(_convert(name, X), _convert(name, y))
    assert ref.selected_ == ("linear" if linear else "network")
    assert_same_model(model, ref, name)
    if linear:
        assert model.linear_alpha_ == ref.linear_alpha_
    assert model.validation_gain_t_ == pytest.approx(ref.validation_gain_t_, rel=1e-9)

    X_new = _regression(n=30, seed=1)[0]
    pred = model.predict(_convert(name, X_new))
    assert _in_library(name, pred) and pred.shape == (30,)
    _close(pred, ref.predict(X_new), 1e-12, "predict")
    assert isinstance(model.score(_convert(name, X), _convert(name, y)), float)
    assert model.score(_convert(name, X), _convert(name, y)) == pytest.approx(
        ref.score(X, y), rel=0, abs=1e-12)


@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("params", [
    dict(solver="lbfgs", max_iter=40),                                   # held-out L-BFGS
    dict(solver="lbfgs", max_iter=40, early_stopping=False),
    dict(solver="sgd", max_iter=15, early_stopping=False, batch_size=32, shuffle=False),
    dict(solver="auto", max_iter=30, standardize_y=False, bn_ddof=1),
], ids=["lbfgs-held-out", "lbfgs", "sgd", "auto-raw-y"])
def test_regressor_solvers_equal_numpy(dispatch, name, params):
    X, y = _regression(n=90)
    Y = np.stack([y, np.cos(X[:, 2])], axis=1)          # two targets: shape (N, 2) kept
    kw = dict(hidden_layer_sizes=(12, 6), random_state=3, **params)
    with sklearn.config_context(array_api_dispatch=False):
        ref = BNMLPRegressor(**kw).fit(X, Y)
    model = BNMLPRegressor(**kw).fit(_convert(name, X), _convert(name, Y))
    # L-BFGS takes up to 40 line searches: rounding grows to ~1e-13 relative
    assert_same_model(model, ref, name, rtol=1e-11)
    pred = model.predict(_convert(name, X))
    assert _in_library(name, pred) and tuple(pred.shape) == (90, 2)
    _close(pred, ref.predict(X), 1e-11, "predict")


@pytest.mark.parametrize("name", NAMESPACES)
def test_sample_weight_and_mixed_libraries(dispatch, name):
    # y and the weights may come from NumPy (or another library): they follow X.
    X, y = _regression(n=80)
    w = np.random.default_rng(5).uniform(0.2, 3.0, size=80)
    for kw in (dict(max_iter=8), dict(solver="lbfgs", early_stopping=False, max_iter=20)):
        kw = dict(hidden_layer_sizes=(8,), random_state=1, **kw)
        with sklearn.config_context(array_api_dispatch=False):
            ref = BNMLPRegressor(**kw).fit(X, y, sample_weight=w)
        model = BNMLPRegressor(**kw).fit(_convert(name, X), y, sample_weight=_convert(name, w))
        assert_same_model(model, ref, name, rtol=1e-11)
        _close(model.predict(_convert(name, X)), ref.predict(X), 1e-11, "predict")


@pytest.mark.parametrize("name", NAMESPACES)
def test_numpy_x_with_y_of_another_library_is_numpy(dispatch, name):
    # X decides: NumPy X trains in NumPy whatever library y and the weights are in.
    X, y = _regression(n=60)
    w = np.linspace(0.5, 2.0, 60)
    for Est, target in ((BNMLPRegressor, y), (BNMLPClassifier, _labels(X))):
        kw = dict(hidden_layer_sizes=(6,), random_state=0, max_iter=5)
        with sklearn.config_context(array_api_dispatch=False):
            ref = Est(**kw).fit(X, target, sample_weight=w)
        model = Est(**kw).fit(X, _convert(name, target), sample_weight=_convert(name, w))
        assert isinstance(model.params_[0]["w"], np.ndarray)
        pred = model.predict(X)
        assert isinstance(pred, np.ndarray)
        np.testing.assert_array_equal(pred, ref.predict(X))


@pytest.mark.parametrize("name", NAMESPACES)
def test_float32_stays_float32(dispatch, name):
    X, y = _regression(n=80)
    X32, y32 = X.astype(np.float32), y.astype(np.float32)
    kw = dict(hidden_layer_sizes=(8,), random_state=0, max_iter=10)
    with sklearn.config_context(array_api_dispatch=False):
        ref = BNMLPRegressor(**kw).fit(X32, y32)
    model = BNMLPRegressor(**kw).fit(_convert(name, X32), _convert(name, y32))
    xp_f32 = model.params_[0]["w"].dtype
    assert all(a.dtype == xp_f32 for a in tree_leaves(model.params_))
    assert str(xp_f32).endswith("float32")
    pred = model.predict(_convert(name, X32))
    assert str(pred.dtype).endswith("float32")
    _close(pred, ref.predict(X32), 1e-4, "float32 predict")
    # a float64 target keeps float64 predictions, as in NumPy
    model64y = BNMLPRegressor(**kw).fit(_convert(name, X32), _convert(name, y))
    assert str(model64y.predict(_convert(name, X32)).dtype).endswith("float64")


# ----------------------------------------------------------------- classifier

@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("params", [{}, dict(solver="lbfgs", max_iter=30)],
                         ids=["defaults", "lbfgs-held-out"])
def test_classifier_equals_numpy(dispatch, name, params):
    X, _ = _regression(n=150)
    labels = _labels(X)
    with sklearn.config_context(array_api_dispatch=False):
        ref = BNMLPClassifier(random_state=2, **params).fit(X, labels)
    model = BNMLPClassifier(random_state=2, **params).fit(_convert(name, X),
                                                         _convert(name, labels))
    assert_same_model(model, ref, name, rtol=1e-11)
    assert _in_library(name, model.classes_)
    np.testing.assert_array_equal(to_numpy(model.classes_), ref.classes_)
    Xc = _convert(name, X)
    for method in ("predict_proba", "predict_log_proba"):
        out = getattr(model, method)(Xc)
        assert _in_library(name, out)
        _close(out, getattr(ref, method)(X), 1e-11, method)
    pred = model.predict(Xc)
    assert _in_library(name, pred)
    np.testing.assert_array_equal(to_numpy(pred), ref.predict(X))
    score = model.score(Xc, _convert(name, labels))
    assert isinstance(score, float) and score == ref.score(X, labels)


@pytest.mark.parametrize("name", NAMESPACES)
def test_string_labels_stay_numpy(dispatch, name):
    X, _ = _regression(n=60)
    labels = np.array(["low", "mid", "high"])[_labels(X)]
    kw = dict(hidden_layer_sizes=(8,), random_state=0, max_iter=10)
    with sklearn.config_context(array_api_dispatch=False):
        ref = BNMLPClassifier(**kw).fit(X, labels)
    model = BNMLPClassifier(**kw).fit(_convert(name, X), labels)
    assert isinstance(model.classes_, np.ndarray)       # a tensor cannot hold strings
    np.testing.assert_array_equal(model.predict(_convert(name, X)), ref.predict(X))
    assert _in_library(name, model.predict_proba(_convert(name, X)))


# ------------------------------------------------------------- errors, state

def _error(fn):
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    return info.type, str(info.value).split("\n")[0].split("(")[0]


@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("Est", [BNMLPRegressor, BNMLPClassifier])
def test_bad_input_gives_numpy_errors(dispatch, name, Est):
    X, y = _regression(n=40)
    y = _labels(X) if Est is BNMLPClassifier else y
    X_nan = X.copy()
    X_nan[3, 1] = np.nan
    y_nan = y.astype(float)
    y_nan[2] = np.nan
    bad_fits = [(X_nan, y), (X[:0], y[:0]), (X[:, 0], y), (X[:1], y[:1]), (X, y[:-1])]
    if Est is BNMLPRegressor:
        bad_fits.append((X, y_nan))
    kw = dict(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    for bx, by in bad_fits:
        with sklearn.config_context(array_api_dispatch=False):
            want = _error(lambda: Est(**kw).fit(bx, by))
        got = _error(lambda: Est(**kw).fit(_convert(name, bx), _convert(name, by)))
        assert got == want

    model = Est(**kw).fit(_convert(name, X), _convert(name, y))
    with sklearn.config_context(array_api_dispatch=False):
        ref = Est(**kw).fit(X, y)
        want = _error(lambda: ref.predict(X[:, :3]))
    assert _error(lambda: model.predict(_convert(name, X[:, :3]))) == want
    before = to_numpy(model.predict(_convert(name, X)))
    with pytest.raises(ValueError, match="NaN"):
        model.fit(_convert(name, X_nan), _convert(name, y))   # a failed refit ...
    np.testing.assert_array_equal(to_numpy(model.predict(_convert(name, X))), before)  # ... keeps


@pytest.mark.parametrize("name", NAMESPACES)
def test_predict_in_another_library_is_an_error(dispatch, name):
    X, y = _regression(n=40)
    model = BNMLPRegressor(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(
        _convert(name, X), _convert(name, y))
    with pytest.raises(ValueError, match=r"BNMLPRegressor.predict\(\) must use the same "
                                         "namespace"):
        model.predict(X)
    with sklearn.config_context(array_api_dispatch=False):
        with pytest.raises(ValueError, match="array_api_dispatch=True"):
            model.predict(X)
    # and a NumPy model meets a tensor under dispatch: the same error
    numpy_model = BNMLPRegressor(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="must use the same namespace"):
        numpy_model.predict(_convert(name, X))


def test_reducer_with_another_library_is_an_error(dispatch):
    from bnmat.distributed import SingleProcessReducer

    class TwoProcesses(SingleProcessReducer):
        size = 2

    X, y = _regression(n=40)
    model = BNMLPRegressor(hidden_layer_sizes=(4,), early_stopping=False)
    with pytest.raises(ValueError, match="reducer=.*NumPy arrays"):
        model.fit(_convert("array_api_strict", X), _convert("array_api_strict", y),
                  reducer=TwoProcesses())
    assert not hasattr(model, "params_")


def test_without_dispatch_everything_is_numpy():
    # scikit-learn's default: other libraries' arrays are converted to NumPy.
    X, y = _regression(n=40)
    kw = dict(hidden_layer_sizes=(4,), max_iter=3, random_state=0)
    ref = BNMLPRegressor(**kw).fit(X, y)
    model = BNMLPRegressor(**kw).fit(_convert("array_api_strict", X), y)
    assert isinstance(model.params_[0]["w"], np.ndarray)
    pred = model.predict(_convert("array_api_strict", X))
    assert isinstance(pred, np.ndarray)
    np.testing.assert_array_equal(pred, ref.predict(X))


@pytest.mark.skipif(torch is None, reason="needs torch")
def test_pickle_keeps_the_library(dispatch):
    X, y = _regression(n=40)
    model = BNMLPRegressor(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit(
        torch.asarray(X), torch.asarray(y))
    again = pickle.loads(pickle.dumps(model))
    assert torch.equal(again.predict(torch.asarray(X)), model.predict(torch.asarray(X)))


# ------------------------------------------------------- the checker can fail

def test_the_comparison_fails_on_a_wrong_model(dispatch):
    X, y = _regression(n=60)
    kw = dict(hidden_layer_sizes=(6,), max_iter=5)
    with sklearn.config_context(array_api_dispatch=False):
        ref = BNMLPRegressor(random_state=0, **kw).fit(X, y)
    model = BNMLPRegressor(random_state=0, **kw).fit(_convert("array_api_strict", X),
                                                      _convert("array_api_strict", y))
    assert_same_model(model, ref, "array_api_strict")
    # another seed
    other = BNMLPRegressor(random_state=1, **kw).fit(_convert("array_api_strict", X),
                                                      _convert("array_api_strict", y))
    with pytest.raises(AssertionError):
        assert_same_model(other, ref, "array_api_strict")
    # one weight off by 1e-10 of the largest (a rounding-sized error is not tolerated)
    xp = array_api_strict
    w = model.params_[-1]["w"]
    model.params_[-1]["w"] = w + 1e-10 * xp.max(xp.abs(w))
    with pytest.raises(AssertionError):
        assert_same_model(model, ref, "array_api_strict")
    model.params_[-1]["w"] = w
    # a NumPy leaf where the library's array belongs
    model.params_[0]["w"] = to_numpy(model.params_[0]["w"])
    with pytest.raises(AssertionError, match="left the library"):
        assert_same_model(model, ref, "array_api_strict")


# ------------------------------------------------------------------- the guide

DOC = Path(__file__).resolve().parents[1] / "docs" / "estimators.md"


def test_guide_examples_run(monkeypatch, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _doc_examples import check_doc_examples

    monkeypatch.setenv("SCIPY_ARRAY_API", "1")     # the guide sets it; undone after the test
    try:
        check_doc_examples(DOC, capsys, ignore_warnings=True)
    finally:
        sklearn.set_config(array_api_dispatch=False)


# ------------------------------------------------- scikit-learn's own checks

def test_sklearn_array_api_checks_in_a_fresh_interpreter():
    # The configuration a user has: SCIPY_ARRAY_API=1 set before SciPy is imported.
    # Values are compared too (check_values=True), also in float32.
    code = textwrap.dedent("""
        import warnings
        from sklearn.utils.estimator_checks import (
            check_array_api_input, check_array_api_mixed_inputs,
            check_array_api_same_namespace)
        from sklearn.utils._array_api import NamespaceAndDevice
        from bnmat import BNMLPClassifier, BNMLPRegressor
        warnings.simplefilter("ignore")
        cases = [("array_api_strict", "CPU_DEVICE", "float64"),
                 ("array_api_strict", "device1", "float32"),
                 ("torch", "cpu", "float64")]
        for est in (BNMLPRegressor(max_iter=20), BNMLPClassifier(max_iter=20)):
            name = type(est).__name__
            for ns, device, dtype in cases:
                check_array_api_input(name, est, array_namespace=ns, device_name=device,
                                      dtype_name=dtype, check_values=True)
            check_array_api_mixed_inputs(
                name, est, X_ns_and_device=NamespaceAndDevice("torch", "cpu"),
                other_ns_and_device=NamespaceAndDevice("array_api_strict", "device1"),
                check_values=True)
            check_array_api_same_namespace(name, est, array_namespace="array_api_strict")
        print("passed")
    """)
    env = {**os.environ, "SCIPY_ARRAY_API": "1", "OMP_NUM_THREADS": "1"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "passed" in out.stdout


@pytest.mark.skipif(torch is None, reason="needs torch")
def test_panel_estimator_refuses_other_libraries_clearly(dispatch):
    # PanelBNMLPRegressor computes in NumPy only: under dispatch another library's X is
    # one clear TypeError (not scikit-learn's dtype error from deep inside), in fit
    # and in predict, and a refused fit leaves the estimator unfitted.
    from bnmat import PanelBNMLPRegressor

    X, y = _regression(n=40, p=3)
    groups = np.repeat(np.arange(10), 4)
    est = PanelBNMLPRegressor((3,), max_iter=3, random_state=0)
    with pytest.raises(TypeError, match="PanelBNMLPRegressor.fit computes in NumPy only"):
        est.fit(torch.from_numpy(X), torch.from_numpy(y), groups=groups)
    assert not hasattr(est, "model_")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y, groups=groups)                   # NumPy under dispatch: fine
    assert isinstance(est.predict(X, groups=groups), np.ndarray)
    with pytest.raises(TypeError, match="PanelBNMLPRegressor.predict computes in NumPy only"):
        est.predict(torch.from_numpy(X), groups=groups)
