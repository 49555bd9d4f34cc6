"""Transactional ``fit``: an estimator's fitted state changes only when a fit succeeds.

scikit-learn's ``fit`` writes its attributes as it goes (``n_features_in_``
during validation, the scalings, the network, ...). A fit that fails halfway —
invalid data found late, a diverging optimizer, Ctrl-C — would leave a mix of
the old model and the new one, which predicts numbers that neither model gives.
:func:`transactional_fit` restores the instance's ``__dict__`` as it was before
the call whenever ``fit`` raises, so a failed refit leaves the previous model
intact and a failed first fit leaves an unfitted estimator (``predict`` raises
``NotFittedError``).
"""

from __future__ import annotations

import functools

__all__ = ["transactional_fit"]


def transactional_fit(fit):
    """Decorate an estimator's ``fit`` so that it changes the instance only on success.

    Parameters
    ----------
    fit : callable
        ``fit(self, *args, **kwargs)``, returning ``self``.

    Returns
    -------
    callable
        The same signature (``functools.wraps``, so scikit-learn's
        introspection of ``fit``'s parameters still sees the original).
    """

    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        saved = dict(self.__dict__)
        try:
            return fit(self, *args, **kwargs)
        except BaseException:
            # Also KeyboardInterrupt: an interrupted fit is a failed fit.
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    return wrapper
