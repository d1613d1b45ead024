"""A learned surrogate of the proxy: predicts how much accuracy (or fidelity) a policy loses, from the policies
evaluated so far, with an uncertainty.

The model is additive over layers and linear in the measured quantization errors (:mod:`mpq_rl.search.sensitivity`)::

    proxy(policy) ~ proxy_fp32 - sum_l ( cw_l * ew_l(w_l) + ca_l * ea_l(a_l) ),   cw_l, ca_l >= 0

i.e. one non-negative importance per layer and tensor (weight, input), the role Hessian traces play in HAWQ, but
fitted to real evaluations of whole policies. The fit is non-negative least squares with a ridge pull of every
coefficient towards one shared value (itself the least-squares fit of a single coefficient), so a handful of
evaluations already gives a sensible model and more data let layers differ. Uncertainty comes from an ensemble of
bootstrap refits: :meth:`Surrogate.predict` gives the ensemble's mean and standard deviation. Before any data,
every coefficient is 1 (the loss is the total relative quantization noise): the sensitivity ordering prior.

With ``interactions="adjacent"`` the model adds one non-negative term per pair of consecutive layers,
``+ d_l * e_l * e_(l+1)`` with ``e_l = ew_l(w_l) + ea_l(a_l)`` (errors that compound through the next layer, pulled
towards 0 by the ridge): the policy's loss is no longer a sum over layers, so its optimum under the budget is no
longer a multiple-choice knapsack (:meth:`Surrogate.layer_losses` gives the additive part only, which the solvers
use; :meth:`Surrogate.predict` and :meth:`Surrogate.pair_coefficients` the whole model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import nnls

from mpq_rl.search.budget import Choice
from mpq_rl.search.sensitivity import Sensitivity

PRIOR_COEFFICIENT = 1.0
"""Every layer's importance before any evaluation."""
LINKS = ("linear", "noise")
INTERACTIONS = ("none", "adjacent")
_MIN_COSINE = 1e-3


class Surrogate:
    """Bootstrap ensemble of non-negative, ridge-pulled linear fits of the proxy loss on quantization errors."""

    def __init__(
        self,
        sensitivity: Sensitivity,
        proxy_fp32: float,
        members: int = 8,
        ridge: float = 0.1,
        seed: int = 0,
        link: str = "linear",
        interactions: str = "none",
    ) -> None:
        if members < 1:
            raise ValueError("a surrogate needs at least one ensemble member")
        if link not in LINKS:
            raise ValueError(f"unknown link {link!r}: choose one of {LINKS}")
        if interactions not in INTERACTIONS:
            raise ValueError(f"unknown interactions {interactions!r}: choose one of {INTERACTIONS}")
        self.link = link
        self.interactions = interactions
        self.sensitivity = sensitivity
        self.proxy_fp32 = float(proxy_fp32)
        self.members = members
        self.ridge = ridge
        self.rng = np.random.default_rng(seed)
        layers = sensitivity.weight.shape[0]
        pairs = max(layers - 1, 0) if interactions == "adjacent" else 0
        self.coefficients = np.concatenate(
            [np.full((members, 2 * layers), PRIOR_COEFFICIENT), np.zeros((members, pairs))], axis=1
        )
        """``[member, 2 * layers (+ layers - 1)]``: weight importances of every layer, then input importances (then
        the adjacent pairs' interactions)."""
        self.samples = 0

    @property
    def layers(self) -> int:
        return self.sensitivity.weight.shape[0]

    def features(self, choices: np.ndarray) -> np.ndarray:
        """``[policy, 2 * layers]`` errors of policies given as ``[policy, layer, 2]`` candidate indices."""
        choices = np.asarray(choices, dtype=np.int64).reshape(-1, self.layers, 2)
        rows = np.arange(self.layers)
        weight = self.sensitivity.weight[rows, choices[..., 0]]
        activation = self.sensitivity.activation[rows, choices[..., 1]]
        if self.interactions == "none":
            return np.concatenate([weight, activation], axis=1)
        both = weight + activation
        return np.concatenate([weight, activation, both[:, :-1] * both[:, 1:]], axis=1)

    def pair_coefficients(self) -> np.ndarray:
        """The ensemble mean's interaction of each adjacent pair of layers (empty without interactions)."""
        return self.coefficients.mean(axis=0)[2 * self.layers :]

    def layer_losses(self, coefficients: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Predicted loss of each layer at each weight / activation candidate: ``[layer, n_w]``, ``[layer, n_a]``
        (ensemble mean by default); a policy's predicted loss is the sum over layers of its two entries (plus the
        pair terms of an interacting model)."""
        c = self.coefficients.mean(axis=0) if coefficients is None else coefficients
        layers = self.layers
        return c[:layers, None] * self.sensitivity.weight, c[layers : 2 * layers, None] * self.sensitivity.activation

    def fit(self, choices: Sequence[Sequence[Choice]], proxies: Sequence[float]) -> None:
        """Refit every ensemble member on the evaluated policies (``choices``) and their proxies."""
        x = self.features(np.array(choices))
        loss = self.loss(np.asarray(proxies, dtype=np.float64))
        self.samples = len(loss)
        if self.samples == 0:
            return
        for m in range(self.members):
            pick = np.arange(self.samples) if m == 0 else self.rng.integers(self.samples, size=self.samples)
            self.coefficients[m] = self._fit_one(x[pick], loss[pick])

    def _fit_one(self, x: np.ndarray, loss: np.ndarray) -> np.ndarray:
        additive = 2 * self.layers
        total = x[:, :additive].sum(axis=1)
        shared = float(total @ loss / (total @ total)) if total @ total > 0 else PRIOR_COEFFICIENT
        shared = max(shared, 0.0)
        dims = x.shape[1]
        strength = np.sqrt(self.ridge * max(float((x[:, :additive] ** 2).sum()) / additive, 1e-12))
        a = np.vstack([x, strength * np.eye(dims)])
        pulled = np.concatenate([np.full(additive, shared), np.zeros(dims - additive)])  # interactions towards 0
        b = np.concatenate([loss, strength * pulled])
        coefficients, _ = nnls(a, b, maxiter=50 * dims)
        return coefficients

    def loss(self, proxies: np.ndarray) -> np.ndarray:
        """The loss of proxies on the model's additive scale (see ``link`` in the module docstring)."""
        if self.link == "noise":
            cosines = np.maximum(proxies, _MIN_COSINE)
            return 1.0 / cosines**2 - 1.0 / max(self.proxy_fp32, _MIN_COSINE) ** 2
        return self.proxy_fp32 - proxies

    def proxy(self, losses: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`loss`."""
        if self.link == "noise":
            return 1.0 / np.sqrt(np.maximum(losses + 1.0 / max(self.proxy_fp32, _MIN_COSINE) ** 2, 1.0))
        return self.proxy_fp32 - losses

    def predict(self, choices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation over the ensemble of the predicted proxy of ``[policy, layer, 2]``."""
        predicted = self.proxy(self.features(choices) @ self.coefficients.T)
        return predicted.mean(axis=1), predicted.std(axis=1)
