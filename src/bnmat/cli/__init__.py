"""The ``bnmat`` command line: ``fit``, ``predict``, ``gradcheck`` and ``demo``.

Run ``bnmat <command> --help`` for the options; ``docs/cli.md`` has examples.
``bnmat fit --entity COL [--time COL] [--linear COL ...]`` fits a fixed-effects
network to panel data (:mod:`bnmat.cli.panel`).
Bad input (a missing file, an unparsable number, a missing or extra column,
NaN, too few rows) ends with one line ``bnmat: error: ...`` on stderr and exit
status 2, never a traceback. Set ``BNMAT_TRACEBACK=1`` to see the traceback of
an unexpected error.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from ._common import DEFAULT_MODEL, UsageError

__all__ = ["main", "build_parser", "UsageError"]


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors reported like every other error: one line, status 2."""

    def error(self, message):
        self.exit(2, f"bnmat: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bnmat`` with its four subcommands."""
    parser = _Parser(
        prog="bnmat",
        description="Batch-normalized neural networks with backpropagation in closed matrix form.",
    )
    from .._version import __version__

    parser.add_argument("--version", action="version", version=f"bnmat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    fit = sub.add_parser(
        "fit", help="train a network on a CSV file (or the bundled wage panel)",
        description="Train Dense→BatchNorm→activation blocks on a CSV file with a header "
                    "row. Without DATA, trains on the bundled Vella–Verbeek (1998) wage "
                    "panel (4,360 rows, target lwage). Inputs are standardized; a random "
                    "validation split is held out. With --entity COL, a fixed-effects "
                    "(optionally partially linear) network for panel data.")
    fit.add_argument("data", nargs="?", metavar="DATA.csv",
                     help="CSV file with a header row (.csv.gz works too); default: the "
                          "bundled wage panel")
    fit.add_argument("--target", metavar="COL",
                     help="column to predict (required with DATA; default lwage without)")
    fit.add_argument("--drop", nargs="+", default=[], metavar="COL",
                     help="columns that are not features (identifiers); without DATA, nr")
    fit.add_argument("--features", nargs="+", default=None, metavar="COL",
                     help="the feature columns (default: every column but the target, the "
                          "--drop columns and the label columns); only these are read")
    fit.add_argument("--categorical", nargs="+", default=[], metavar="COL",
                     help="feature columns of categories (text or codes): one-hot encoded; "
                          "the levels are stored in the model, and predict rejects new ones")
    fit.add_argument("--dropna", action="store_true",
                     help="drop rows with a missing value in a column the model uses, and "
                          "say how many (default: stop with an error that counts them)")
    _table_options(fit)
    fit.add_argument("--classify", action="store_true",
                     help="treat the target as class labels (automatic when it is not numeric)")
    fit.add_argument("--hidden", nargs="*", type=int, default=[64, 64], metavar="H",
                     help="hidden layer widths (default: 64 64; none for a linear model)")
    fit.add_argument("--activation", default="relu",
                     choices=["relu", "leaky_relu", "tanh", "logistic", "softplus", "identity"])
    fit.add_argument("--solver", default="auto", choices=["auto", "adam", "sgd", "lbfgs"],
                     help="auto (the default): adam; with --entity and --early-stopping, "
                          "full-batch lbfgs up to 10,000 training rows")
    fit.add_argument("--epochs", type=int, default=50, metavar="N",
                     help="epochs (adam, sgd) or iterations (lbfgs); default 50")
    fit.add_argument("--batch-size", type=int, default=None, metavar="N",
                     help="rows per mini-batch (default min(200, rows); lbfgs: all rows)")
    fit.add_argument("--learning-rate", type=float, default=None, metavar="LR",
                     help="step size (default 1e-3 for adam, 1e-2 for sgd)")
    fit.add_argument("--alpha", type=float, default=1e-4,
                     help="L2 penalty on the dense weights, as scikit-learn's alpha (default 1e-4)")
    fit.add_argument("--validation-fraction", type=float, default=0.2, metavar="F",
                     help="share of rows held out for validation (default 0.2; 0 for none)")
    fit.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                     help="stop when the validation loss has not improved for PATIENCE "
                          "epochs and keep the best epoch's parameters")
    fit.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation "
                     "and shuffling (default 0)")
    fit.add_argument("--output", "-o", default=DEFAULT_MODEL, metavar="PATH",
                     help=f"where to write the model (default ./{DEFAULT_MODEL})")
    fit.add_argument("--plot", metavar="PATH",
                     help="write a PNG of the training and validation loss curves")
    fit.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    fit.add_argument("--distributed", action="store_true",
                     help="data-parallel over MPI: run as mpiexec -n K bnmat fit ... "
                          "--distributed; each rank reads its slice, rank 0 writes the model "
                          "(needs bnmat[mpi]; regression only)")
    panel = fit.add_argument_group(
        "panel data (fixed effects)",
        "With --entity, fit y = α_i (+ τ_t) + x_linᵀb + f(x_nn) by the within estimator: "
        "the unit (and period) effects are profiled out of the loss, recovered after "
        "training, and the metric is the within R². See docs/panel.md.")
    panel.add_argument("--entity", metavar="COL",
                       help="column of unit labels (integers or text); not a feature")
    panel.add_argument("--time", metavar="COL",
                       help="column of period labels; not a feature. Makes the effects two-way "
                            "and the validation rows the last periods, by default")
    panel.add_argument("--linear", nargs="+", default=[], metavar="COL",
                       help="feature columns that enter linearly; their coefficients are "
                            "printed by name (the other features enter the network)")
    panel.add_argument("--effects", choices=["entity", "twoway"], default=None,
                       help="entity (unit effects) or twoway (unit and period effects, needs "
                            "--time); default twoway with --time, else entity")
    panel.add_argument("--holdout", choices=["periods", "units"], default=None,
                       help="validation rows: the last periods (needs --time; the default "
                            "with it) or whole units (the default without --time)")
    panel.add_argument("--group-batchnorm", action="store_true",
                       help="normalize the network's hidden layers with per-unit statistics "
                            "(every training unit needs at least 2 rows)")
    panel.add_argument("--no-linear-fallback", action="store_true",
                       help="with --early-stopping, keep the network even when the linear "
                            "within regression predicts the held-out training units as well")
    panel.add_argument("--inference", choices=["none", "crossfit"], default="none",
                       help="standard errors of the --linear coefficients beside a network: "
                            "crossfit = cross-fitted partialling out over folds of units "
                            "(without a network they are always printed)")
    panel.add_argument("--cov-type", choices=["clustered", "robust", "unadjusted"],
                       default="clustered",
                       help="covariance of the --linear coefficients (default clustered by "
                            "unit; as linearmodels' PanelOLS)")
    panel.add_argument("--cv", type=int, default=5, metavar="K",
                       help="folds of units for --inference crossfit (default 5)")
    panel.add_argument("--n-rep", type=int, default=3, metavar="R",
                       help="draws of the folds for --inference crossfit, aggregated by "
                            "medians (default 3)")
    panel.add_argument("--crossfit-alpha", type=float, default=0.1, metavar="A",
                       help="weight decay of the nuisance networks of --inference crossfit, "
                            "which train without early stopping or fallback (default 0.1)")

    pred = sub.add_parser(
        "predict", help="predict new rows with a model written by bnmat fit",
        description="Predict the rows of a CSV file that has the training features as "
                    "columns (the target and dropped columns may be present and are ignored).")
    pred.add_argument("model", metavar="MODEL", help="model file written by bnmat fit")
    pred.add_argument("data", metavar="DATA.csv", help="CSV file with a header row")
    pred.add_argument("--output", "-o", metavar="PATH",
                      help="write the predictions to this CSV file (default: standard output)")
    _table_options(pred)

    gc = sub.add_parser(
        "gradcheck", help="compare the network's analytic gradients with finite differences",
        description="Build Dense→BatchNorm→activation blocks on random data, compute the "
                    "gradient of R = Σ(y − ŷ)² with the closed matrix formulas and print a "
                    "per-parameter table against central finite differences (float64). "
                    "Exit status 0 when they agree, 1 when not.")
    gc.add_argument("--hidden", nargs="*", type=int, default=[4, 3], metavar="H",
                    help="hidden layer widths (default 4 3)")
    gc.add_argument("--activation", default="tanh",
                    choices=["relu", "leaky_relu", "tanh", "logistic", "softplus", "identity"],
                    help="default tanh (smooth: finite differences are exact up to rounding)")
    gc.add_argument("--ddof", type=int, default=0, choices=[0, 1],
                    help="batch variance divides by N − ddof (default 0)")
    gc.add_argument("--eps", type=float, default=1e-5, help="batch norm's ε > 0 (default 1e-5)")
    gc.add_argument("--rows", type=int, default=12, help="rows of the random data (default 12)")
    gc.add_argument("--features", type=int, default=5, help="columns of X (default 5)")
    gc.add_argument("--inference", action="store_true",
                    help="check inference mode (stored statistics) instead of training mode")
    gc.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance (default 1e-6)")
    gc.add_argument("--seed", type=int, default=0, help="seed of the data and weights")

    demo = sub.add_parser("demo", help="the worked example: one batch-normalized layer, by hand",
                          description="Print the closed-form gradients of a small network "
                                      "next to finite differences and explicit Jacobians.")
    demo.add_argument("--second-order", action="store_true",
                      help="print the Hessian-vector product from the closed forms beside "
                           "finite differences of the gradient and torch")
    return parser


def _separator(text: str) -> str:
    return "\t" if text in ("\\t", "tab", "TAB") else text


def _table_options(parser) -> None:
    parser.add_argument("--sep", default=",", metavar="CHAR", type=_separator,
                        help="field separator of the CSV file (default ','; ';' or '\\t' for "
                             "tab are common)")
    parser.add_argument("--decimal", default=".", metavar="CHAR",
                        help="decimal mark of the numbers (default '.'; ',' with --sep ';')")


def main(argv=None) -> int:
    """Run ``bnmat`` with the arguments ``argv`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 on success, 1 when ``gradcheck`` or ``demo`` finds a
        disagreement, 2 for bad input (with a one-line message on stderr).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or argparse's own usage error (status 2)
        return int(exc.code or 0)
    try:
        if args.command == "fit":
            from .fit import run_fit
            return run_fit(args)
        if args.command == "predict":
            from .predict import run_predict
            return run_predict(args)
        if args.command == "gradcheck":
            return _run_gradcheck(args)
        if getattr(args, "second_order", False):
            from ..demo import run_second_order_demo
            return run_second_order_demo()
        from ..demo import run_demo
        return run_demo()
    except KeyboardInterrupt:
        print("bnmat: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of standard output went away (`bnmat predict ... | head`):
        # not an error of ours. Silence the final flush, and exit as a program
        # killed by SIGPIPE would (128 + 13), without a message.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except (ValueError, OSError, ImportError, TypeError, KeyError) as exc:
        if os.environ.get("BNMAT_TRACEBACK"):
            raise
        print(f"bnmat: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: no such file"
    if isinstance(exc, IsADirectoryError) and exc.filename:
        return f"{exc.filename}: is a directory, not a file"
    if isinstance(exc, PermissionError) and exc.filename:
        return f"{exc.filename}: permission denied"
    if isinstance(exc, ImportError) and exc.name:
        return f"this command needs the package {exc.name!r} (pip install {exc.name})"
    text = str(exc) if not isinstance(exc, KeyError) else str(exc.args[0] if exc.args else exc)
    return " ".join(text.split()) or type(exc).__name__


# ---------------------------------------------------------------- gradcheck


def _run_gradcheck(args) -> int:
    import numpy as np

    from .. import train
    from ..gradcheck import check_grad
    from ..layers._mlp import build_mlp

    if any(h < 1 for h in args.hidden):
        raise UsageError(f"--hidden widths must be >= 1; got {args.hidden}")
    if args.features < 1:
        raise UsageError(f"--features must be >= 1; got {args.features}")
    if args.rows < max(2, args.ddof + 1):
        raise UsageError(f"--rows must be at least 2 for batch statistics; got {args.rows}")
    if not args.eps > 0:
        raise UsageError(f"--eps must be > 0 (the layers need ε > 0); got {args.eps}")

    rng = np.random.default_rng(args.seed)
    x = rng.normal(size=(args.rows, args.features))
    y = rng.normal(size=(args.rows, 1))
    net = build_mlp(args.hidden, args.activation, 1, eps=args.eps, ddof=args.ddof)
    params, state = net.init(x, seed=args.seed)
    # Start away from the initial γ = 1, β = 0 so that no term vanishes by symmetry.
    params = [{k: v + 0.3 * rng.normal(size=v.shape) for k, v in layer.items()} for layer in params]
    if args.inference:
        # Stored statistics that differ from the batch's own.
        _, state = train.value_and_grad(net, params, state, x + rng.normal(size=x.shape), y,
                                        loss="sse")[::2]

    names = [(i, k, f"{i}:{type(net.layers[i]).__name__}.{k}")
             for i, layer in enumerate(params) for k in layer]

    def unflatten(flat):
        out = [dict(layer) for layer in params]
        for i, k, name in names:
            out[i][k] = flat[name]
        return out

    training = not args.inference

    def loss(flat):
        # The forward pass only: the finite differences never see a backward formula.
        y_hat = net.forward(unflatten(flat), state, x, training=training)[0]
        return float(np.sum((np.asarray(y_hat) - y) ** 2))

    def grad(flat):
        g = train.value_and_grad(net, unflatten(flat), state, x, y, loss="sse",
                                 training=training)[1]
        return {name: g[i][k] for i, k, name in names}

    mode = "inference (stored statistics)" if args.inference else "training (batch statistics)"
    widths = " → ".join(str(w) for w in [args.features, *args.hidden, 1])
    print(f"bnmat gradcheck: {widths}, {args.activation}, BatchNorm(ddof={args.ddof}, "
          f"eps={args.eps:g}), {mode}, N={args.rows}, R = Σ(y − ŷ)², seed {args.seed}")
    flat = {name: params[i][k] for i, k, name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degeneracy notes are printed in the table
        report = check_grad(loss, grad, flat, rtol=args.rtol, seed=args.seed)
    print(report)
    return 0 if report.ok else 1
