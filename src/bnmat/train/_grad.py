"""Whole-network gradients: value_and_grad, loss_value, train_step."""

from __future__ import annotations

from ..optim import Optimizer
from ._groups import as_factors, for_loss
from ._loss import (WITHIN_LOSSES, _add_l2, _backward_without_dx, _match_target, check_l2,
                    l2_penalty, net_kwargs, resolve_loss)

__all__ = ["value_and_grad", "loss_value", "l2_penalty", "train_step", "WITHIN_LOSSES"]

def value_and_grad(net, params, state, x, y, loss="sse", *, training: bool = True,
                   l2: float = 0.0, groups=None, reducer=None, sample_weight=None):
    """The loss of a network and its gradient with respect to every parameter.

    Forward through ``net`` (training or inference mode), the loss, then the
    backward passes in reverse order: each layer's closed-form backward applied
    to the upstream gradient.

    Parameters
    ----------
    net : Sequential, Additive or any layer
    params, state : list
        From ``net.init``.
    x : array, shape (N, p)
    y : array, shape (N,) or (N, k)
        A target of shape (N,) is matched to a (N, 1) output. For
        ``"softmax_cross_entropy"`` y is one-hot (N, k) or integer labels (N,).
    loss : str or (forward, backward), default "sse"
        ``"sse"``, ``"mse"``, ``"softmax_cross_entropy"``, or a within
        (fixed-effects) loss: ``"within_sse"`` is ``‖M(y − ŷ)‖²`` with M the
        projection that removes the effects of every factor of ``groups``
        (:func:`bnmat.ops.within_sse_forward`; one factor exactly, several by
        alternating projections to a relative tolerance of 1e-10), and
        ``"within_mse"`` the same divided by N·k. Their gradient is
        ``−2 M(y − ŷ)`` (over N·k). A pair follows the :mod:`bnmat.ops.losses`
        convention: ``forward(y_pred, y) -> (loss, cache)``,
        ``backward(dloss, cache) -> dy_pred``.
    training : bool, default True
        True: batch statistics (N ≥ 2 rows), the gradient of the training
        objective, running statistics updated in ``new_state``. False: the
        gradient of the inference (``predict``) path, stored statistics held
        fixed, ``new_state`` is ``state``.
    l2 : float, default 0
        Adds ``½ l2 Σ ‖W‖²`` over the Dense weights (entries named ``"w"``) to
        the loss and ``l2 W`` to their gradients.
    groups : array_like, optional
        The group labels of the rows: one array of shape (N,), or several
        factors (a sequence of (N,) arrays or an (N, F) array, e.g.
        ``(unit, period)``). Layers that read labels
        (:class:`~bnmat.layers.GroupBatchNorm`) get the first factor; the
        within losses project out all factors; other layers ignore them.
    reducer : bnmat.distributed reducer, optional
        Rows spread over processes: ``x`` and ``y`` are this rank's rows, and
        the loss, gradients and new state are those of all ranks' rows
        concatenated (batch norms use the whole batch's statistics; SSE sums
        over all rows, MSE divides by the total count), identical on every
        rank. Losses "sse", "mse" and "softmax_cross_entropy"; a rank may hold
        no rows. None or a reducer of size 1: the ordinary path. See
        :mod:`bnmat.distributed` and ``docs/scaling.md``.
    sample_weight : array_like, shape (N,), optional
        Frequency weights w ≥ 0: the loss is Σᵢ wᵢ·(row i's loss) (the means
        divide by 1ᵀw) and every batch norm uses weighted batch statistics, so
        integer weights equal repeated rows (:mod:`bnmat.train._weighted`;
        reference path, Sequential networks without group layers).

    Returns
    -------
    loss : float
    grads : list
        Same structure and keys as ``params``.
    new_state : list

    Raises
    ------
    ValueError
        From the ops: a training batch with fewer than 2 rows, non-finite
        values, non-conforming shapes.
    """
    if reducer is not None:
        from ._distributed import distributed_value_and_grad, is_distributed
        if is_distributed(reducer):
            if sample_weight is not None:
                raise ValueError("sample_weight cannot be combined with a distributed reducer")
            return distributed_value_and_grad(net, params, state, x, y, loss,
                                              training=training, l2=l2, groups=groups,
                                              reducer=reducer)
    l2 = check_l2(l2)
    if sample_weight is not None:
        if groups is not None:
            raise ValueError("sample_weight and groups cannot be combined")
        from ._weighted import weighted_value_and_grad
        return weighted_value_and_grad(net, params, state, x, y, loss, training=training,
                                       l2=l2, sample_weight=sample_weight)
    factors = as_factors(groups, x.shape[0])
    forward, backward, name = resolve_loss(loss, for_loss(factors))
    y_pred, new_state, cache = net.forward(params, state, x, training=training,
                                           **net_kwargs(net, factors))
    target = _match_target(y_pred, y, name)
    value, loss_cache = forward(y_pred, target)
    dy_pred = backward(1.0, loss_cache)
    _, grads = _backward_without_dx(net, dy_pred, cache)
    value = float(value)
    if l2:
        value += l2_penalty(params, l2)
        grads = _add_l2(grads, params, l2)
    return value, grads, new_state


def loss_value(net, params, state, x, y, loss="sse", *, groups=None) -> float:
    """The loss of ``net.predict`` (inference mode, no penalty) on ``(x, y)``.

    ``groups`` as in :func:`value_and_grad`.
    """
    factors = as_factors(groups, x.shape[0])
    forward, _, name = resolve_loss(loss, for_loss(factors))
    y_pred, _, _ = net.forward(params, state, x, training=False, **net_kwargs(net, factors))
    return float(forward(y_pred, _match_target(y_pred, y, name))[0])


def train_step(net, optimizer: Optimizer, params, state, opt_state, x, y, loss="mse", *,
               l2: float = 0.0, groups=None):
    """One training-mode gradient step on the batch ``(x, y)`` (``groups`` as in
    :func:`value_and_grad`).

    Returns
    -------
    loss : float
        The batch loss before the step (penalty included).
    params, state, opt_state
        Updated (new objects; the inputs are not modified).
    """
    value, grads, state = value_and_grad(net, params, state, x, y, loss, l2=l2, groups=groups)
    params, opt_state = optimizer.update(grads, opt_state, params)
    return value, params, state, opt_state
