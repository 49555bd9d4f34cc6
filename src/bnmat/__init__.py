"""bnmat: batch-normalized networks with backpropagation in closed matrix form.

Submodules
----------
ops          pure forward/backward pairs (dense, batch norm, activations, losses)
jacobians    explicit vec/Kronecker Jacobians for small sizes
gradcheck    tools to check hand-derived gradients
layers       layer configurations and ``Sequential``
train        ``value_and_grad``, ``fit``
optim        optimizers as ``(init, update)`` pairs
estimators   scikit-learn estimators
panel        unit structure: group indices, within transforms, panel models and estimator

The public names below are imported lazily, so ``import bnmat`` stays cheap and
optional dependencies (scikit-learn, matplotlib) load only when used.
"""

from importlib import import_module

from . import ops

from ._version import __version__

# public name -> submodule that defines it
_LAZY = {
    # layers and networks
    "Sequential": "layers", "Dense": "layers", "BatchNorm": "layers",
    "ReLU": "layers", "LeakyReLU": "layers", "Tanh": "layers", "Sigmoid": "layers",
    "Softplus": "layers", "Identity": "layers", "Additive": "layers",
    "GroupBatchNorm": "layers", "Linear": "layers",
    "LayerNorm": "layers", "BatchRenorm": "layers",
    # training
    "value_and_grad": "train", "fit": "train", "fit_lbfgs": "train",
    "population_statistics": "train", "FitResult": "train", "DivergenceError": "train",
    "hvp": "train", "fit_newton": "train", "check_hvp": "gradcheck",
    # persistence
    "save": "io", "load": "io", "register_layer": "io",
    # estimators
    "BNMLPRegressor": "estimators", "BNMLPClassifier": "estimators",
    "PanelBNMLPRegressor": "panel.estimator",
    # panel models
    "fit_panel": "panel.model", "within_r2_score": "panel.model",
    "NotIdentifiedError": "panel.model", "AbsorbedFeaturesError": "panel.model",
    "CollinearFeaturesError": "panel.model", "SmallGroupsError": "panel.model",
    # checking
    "check_grad": "gradcheck", "check_vjp": "gradcheck", "numerical_grad": "gradcheck",
    "GradCheckReport": "gradcheck", "assert_vjp": "gradcheck",
    "DegenerateCheckWarning": "gradcheck",
}
_SUBMODULES = (
    "jacobians", "gradcheck", "layers", "train", "optim", "io", "estimators", "panel", "datasets",
)

__all__ = ["ops", *_SUBMODULES, *_LAZY, "__version__"]


#: module paths that moved (each still imports, with a DeprecationWarning)
_MOVED = {"panel_model": "panel.model", "panel_table": "panel.table",
          "panel_estimator": "panel.estimator"}


def __getattr__(name):
    if name in _MOVED:
        return import_module(f".{name}", __name__)
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'bnmat' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
