"""BNMLPRegressor and BNMLPClassifier: scikit-learn's checks, input handling, behaviour."""

import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from bnmat import BNMLPClassifier, BNMLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# --------------------------------------------------------- scikit-learn's checks

def _expected_failures(estimator):
    # The regressor's default early stopping holds out a fraction of the *rows*:
    # repeated rows and integer weights are split differently, so the two fits
    # see different training sets. Without the held-out split (early_stopping=
    # False, L-BFGS) weights equal repeated rows to 1e-12:
    # tests/test_weighted_batchnorm.py::test_estimators_integer_weights_equal_repeated_rows.
    if isinstance(estimator, BNMLPRegressor) and estimator.early_stopping:
        return {"check_sample_weight_equivalence_on_dense_data":
                "held-out rows for early stopping differ between weights and repeats"}
    # The classifier's default mini-batches (batch_size="auto": 16 rows on small
    # data, so that an epoch is never one step) batch repeated rows differently
    # from weighted ones. Full-batch training is exact (the test below).
    if isinstance(estimator, BNMLPClassifier) and estimator.batch_size == "auto":
        return {"check_sample_weight_equivalence_on_dense_data":
                "mini-batches of repeated rows differ from mini-batches of weighted rows"}
    return {}


@parametrize_with_checks([BNMLPRegressor(), BNMLPClassifier()],
                         expected_failed_checks=_expected_failures)
def test_sklearn_compatible_estimator(estimator, check):
    # Every check, default parameters; the one expected failure is explained above.
    check(estimator)


def test_weights_equal_repeats_without_the_held_out_split():
    # The sklearn check above, for the regressor without early stopping: it must pass.
    from sklearn.utils.estimator_checks import check_sample_weight_equivalence_on_dense_data

    check_sample_weight_equivalence_on_dense_data(
        "BNMLPRegressor", BNMLPRegressor(early_stopping=False, solver="lbfgs"))
    # full-batch Adam: exact
    check_sample_weight_equivalence_on_dense_data(
        "BNMLPClassifier", BNMLPClassifier(solver="adam", batch_size=1000))


def test_array_api_check_with_dispatch_enabled():
    # check_array_api_input skips itself unless SCIPY_ARRAY_API=1 is set before
    # SciPy is imported, so run it in a fresh interpreter to cover it as well.
    code = textwrap.dedent("""
        import warnings
        from functools import partial
        from sklearn.utils.estimator_checks import check_array_api_input
        from bnmat import BNMLPClassifier, BNMLPRegressor
        warnings.simplefilter("ignore")
        for est in (BNMLPRegressor(), BNMLPClassifier()):
            check_array_api_input(type(est).__name__, est, array_namespace="numpy",
                                  expect_only_array_outputs=False)
        print("passed")
    """)
    env = {**os.environ, "SCIPY_ARRAY_API": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "passed" in out.stdout


# ------------------------------------------------------------------ fixtures

def _regression(n=120, p=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] ** 2 - X[:, 2] + 0.1 * rng.normal(size=n)
    return X, y


def _small(**kw):
    return dict(hidden_layer_sizes=(16,), max_iter=30, random_state=0, **kw)


# ------------------------------------------------------------------ pandas

def test_pandas_frame_and_series_match_numpy():
    pd = pytest.importorskip("pandas")
    X, y = _regression()
    frame = pd.DataFrame(X, columns=["educ", "exper", "hours", "union"])
    series = pd.Series(y, name="lwage")
    from_frame = BNMLPRegressor(**_small()).fit(frame, series)
    from_numpy = BNMLPRegressor(**_small()).fit(X, y)
    assert list(from_frame.feature_names_in_) == ["educ", "exper", "hours", "union"]
    assert not hasattr(from_numpy, "feature_names_in_")
    np.testing.assert_array_equal(from_frame.predict(frame), from_numpy.predict(X))
    # columns in another order is an error (scikit-learn's feature-name check)
    with pytest.raises(ValueError, match="feature names"):
        from_frame.predict(frame[["exper", "educ", "hours", "union"]])


def test_pandas_string_labels_for_the_classifier():
    pd = pytest.importorskip("pandas")
    X, y = _regression()
    labels = pd.Series(np.where(y > np.median(y), "high", "low"), dtype="category")
    clf = BNMLPClassifier(**_small()).fit(pd.DataFrame(X), labels)
    assert list(clf.classes_) == ["high", "low"]
    assert set(clf.predict(X)) <= {"high", "low"}


# ------------------------------------------------------------- bad input

@pytest.mark.parametrize("Est", [BNMLPRegressor, BNMLPClassifier])
def test_bad_input_messages(Est):
    X, y = _regression(n=40, p=3)
    if Est is BNMLPClassifier:
        y = (y > 0).astype(int)
    est = Est(**_small())
    with pytest.raises(NotFittedError):
        est.predict(X)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        clone(est).fit(bad, y)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="Input X contains infinity"):
        clone(est).fit(bad, y)
    with pytest.raises(ValueError, match="n_samples=1"):
        clone(est).fit(X[:1], y[:1])
    with pytest.raises(ValueError, match="0 sample"):
        clone(est).fit(X[:0], y[:0])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        clone(est).fit(X, y[:-1])
    with pytest.raises(ValueError, match="Reshape your data"):
        clone(est).fit(X[:, 0], y)
    scipy_sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="[Ss]parse"):
        clone(est).fit(scipy_sparse.csr_matrix(X), y)

    est.fit(X, y)
    with pytest.raises(ValueError, match=f"X has 2 features, but {Est.__name__} is "
                                         "expecting 3 features as input."):
        est.predict(X[:, :2])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        est.predict(bad)
    assert est.predict(X[:1]).shape == (1,)  # one row predicts fine (stored statistics)


def test_nan_in_y_is_rejected():
    X, y = _regression(n=30)
    y[4] = np.nan
    with pytest.raises(ValueError, match="Input y contains NaN"):
        BNMLPRegressor(**_small()).fit(X, y)


@pytest.mark.parametrize("params, match", [
    (dict(activation="swish"), "activation"),
    (dict(solver="rmsprop"), "solver"),
    (dict(hidden_layer_sizes=(10, 0)), "hidden_layer_sizes"),
    (dict(alpha=-1.0), "alpha"),
    (dict(bn_eps=0.0), "bn_eps"),
    (dict(bn_ddof=2), "bn_ddof"),
    (dict(batch_size=0), "batch_size"),
    (dict(validation_fraction=1.0), "validation_fraction"),
])
def test_invalid_hyperparameters_fail_in_fit_not_init(params, match):
    est = BNMLPRegressor(**params)  # __init__ only stores
    X, y = _regression(n=20)
    with pytest.raises(ValueError, match=match):
        est.fit(X, y)


def test_divergence_names_the_epoch():
    X, y = _regression(n=60)
    est = BNMLPRegressor(solver="sgd", learning_rate_init=1e12, momentum=0.0, max_iter=20,
                         random_state=0)
    with pytest.raises(ValueError, match=r"diverged at epoch \d+"):
        est.fit(X, y)


def test_one_class_is_an_error_that_mentions_class():
    X, _ = _regression(n=20)
    with pytest.raises(ValueError, match="1 class"):
        BNMLPClassifier(**_small()).fit(X, np.zeros(20))


# ------------------------------------------------------------- behaviour

def test_predict_does_not_change_the_model():
    X, y = _regression()
    est = BNMLPRegressor(**_small()).fit(X, y)
    before = pickle.dumps((est.params_, est.state_))
    first = est.predict(X)
    second = est.predict(X[::-1])[::-1]
    np.testing.assert_allclose(first, second, rtol=1e-12)  # rows are independent
    assert pickle.dumps((est.params_, est.state_)) == before


def test_same_random_state_is_bitwise_repeatable():
    X, y = _regression()
    a = BNMLPRegressor(**_small()).fit(X, y).predict(X)
    b = BNMLPRegressor(**_small()).fit(X, y).predict(X)
    np.testing.assert_array_equal(a, b)


def test_lbfgs_inference_on_training_rows_equals_full_batch_output():
    # Full-batch training with exact population statistics: predict() on the
    # training rows reproduces the training-mode (batch statistics) output.
    X, y = _regression(n=80)
    est = BNMLPRegressor(hidden_layer_sizes=(8, 6), solver="lbfgs", max_iter=50,
                         random_state=0).fit(X, y)
    xs = est.x_scaling_.apply(X)
    train_out, _, _ = est.net_.forward(est.params_, est.state_, xs, training=True)
    inference_out = est.net_.predict(est.params_, est.state_, xs)
    np.testing.assert_allclose(inference_out, train_out, rtol=1e-10, atol=1e-12)
    assert est.score(X, y) > 0.9


def test_input_scale_does_not_matter():
    # X is standardized inside fit, so an affine change of units of the columns
    # gives the same fitted function (up to rounding).
    X, y = _regression()
    a = BNMLPRegressor(**_small()).fit(X, y)
    X2 = X * np.array([1e3, 1e-3, 7.0, 1.0]) + np.array([1e4, -5.0, 0.0, 3.0])
    b = BNMLPRegressor(**_small()).fit(X2, y)
    np.testing.assert_allclose(a.predict(X), b.predict(X2), rtol=1e-6, atol=1e-8)


def test_float32_stays_float32():
    X, y = _regression()
    est = BNMLPRegressor(**_small()).fit(X.astype(np.float32), y.astype(np.float32))
    assert est.params_[0]["w"].dtype == np.float32
    assert est.predict(X.astype(np.float32)).dtype == np.float32
    # A float64 target keeps its precision (issue 9): float64 predictions.
    est = BNMLPRegressor(**_small()).fit(X.astype(np.float32), y.astype(np.float64))
    assert est.params_[0]["w"].dtype == np.float32
    assert est.predict(X.astype(np.float32)).dtype == np.float64
    clf = BNMLPClassifier(**_small()).fit(X.astype(np.float32), y > 0)
    assert clf.predict_proba(X.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_solvers_fit_a_nonlinear_function(solver):
    X, y = _regression(n=200)
    lr = 1e-2 if solver == "sgd" else 1e-3
    est = BNMLPRegressor(hidden_layer_sizes=(32,), solver=solver, max_iter=150,
                         learning_rate_init=lr, random_state=0).fit(X, y)
    assert est.score(X, y) > 0.8
    assert est.n_iter_ == len(est.loss_curve_) >= 1


def test_linear_model_without_hidden_layers():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(100, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 3.0
    est = BNMLPRegressor(hidden_layer_sizes=(), solver="lbfgs", alpha=0.0, tol=1e-12,
                         random_state=0).fit(X, y)
    np.testing.assert_allclose(est.predict(X), y, atol=1e-4)


def test_multioutput_regression_keeps_the_target_shape():
    X, y = _regression()
    Y = np.column_stack([y, -2 * y + 1])
    est = BNMLPRegressor(**_small()).fit(X, Y)
    assert est.predict(X).shape == (len(X), 2)
    assert BNMLPRegressor(**_small()).fit(X, y[:, None]).predict(X).shape == (len(X), 1)


def test_standardize_y_off_still_fits_and_is_the_same_model_class():
    X, y = _regression()
    est = BNMLPRegressor(**_small(standardize_y=False)).fit(X, 10 * y)
    np.testing.assert_array_equal(est.y_scaling_.mean, 0.0)
    assert est.predict(X).shape == y.shape


def test_early_stopping_records_validation_scores():
    X, y = _regression(n=200)
    est = BNMLPRegressor(hidden_layer_sizes=(16,), early_stopping=True, max_iter=500,
                         learning_rate_init=1e-2, n_iter_no_change=5, random_state=0).fit(X, y)
    assert len(est.validation_scores_) == est.n_iter_ < 500
    assert est.best_validation_score_ == max(est.validation_scores_)
    assert 0.5 < est.best_validation_score_ <= 1.0
    assert BNMLPRegressor(**_small(early_stopping=False)).fit(X, y).validation_scores_ is None


@pytest.mark.parametrize("ddof", [0, 1])
def test_bn_hyperparameters_reach_the_layers(ddof):
    X, y = _regression()
    est = BNMLPRegressor(**_small(bn_ddof=ddof, bn_eps=1e-3, bn_decay=0.5,
                                  linear_fallback=False)).fit(X, y)
    bn = est.net_.layers[1]
    assert (bn.ddof, bn.eps, bn.decay) == (ddof, 1e-3, 0.5)


def test_classifier_multiclass_string_labels_and_probabilities():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [4, 0], [0, 4]])
    X = np.concatenate([c + rng.normal(size=(40, 2)) for c in centers])
    y = np.repeat(np.array(["north", "east", "origin"]), 40)
    clf = BNMLPClassifier(hidden_layer_sizes=(16,), max_iter=100, learning_rate_init=1e-2,
                          random_state=0).fit(X, y)
    assert list(clf.classes_) == ["east", "north", "origin"]
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(X))
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(proba), rtol=1e-6, atol=1e-12)
    assert clf.score(X, y) > 0.9


def test_convergence_warning_when_max_iter_is_reached():
    X, y = _regression()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        BNMLPRegressor(hidden_layer_sizes=(8,), max_iter=2, random_state=0).fit(X, y)
    assert any(issubclass(w.category, ConvergenceWarning) for w in caught)


def test_classifier_early_stopping_scores_are_accuracies():
    X, y = _regression(n=200)
    clf = BNMLPClassifier(hidden_layer_sizes=(16,), early_stopping=True, max_iter=50,
                          random_state=0).fit(X, y > 0)
    scores = np.array(clf.validation_scores_)
    assert len(scores) == clf.n_iter_
    # accuracies on the 20 held-out rows: multiples of 1/20 in [0, 1]
    np.testing.assert_allclose(scores * 20, np.round(scores * 20), atol=1e-9)
    assert 0.0 <= scores.min() and scores.max() <= 1.0
    assert clf.best_validation_score_ in scores
