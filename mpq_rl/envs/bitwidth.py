"""The bit-width environment: one step per quantizable layer, choosing its weight and activation bits."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mpq_rl.budget import Budget, Choice
from mpq_rl.config import RunConfig, load_config
from mpq_rl.evaluator import Evaluator
from mpq_rl.hardware import CostTable, build_cost_table
from mpq_rl.rewards import Outcome, build_reward, proxy_value
from mpq_rl.workload import Workload, load_workload

OBSERVATION_FEATURES = (
    ("layer_index", "position of the layer among the searched layers, 0 (first) to 1 (last)", 0.0, 1.0),
    ("is_conv", "1 for a convolution", 0.0, 1.0),
    ("is_linear", "1 for a linear layer", 0.0, 1.0),
    ("is_depthwise", "1 for a depthwise convolution", 0.0, 1.0),
    ("in_channels", "input channels (features), divided by the model's largest", 0.0, 1.0),
    ("out_channels", "output channels (features), divided by the model's largest", 0.0, 1.0),
    ("kernel", "kernel taps, divided by the model's largest", 0.0, 1.0),
    ("stride", "stride (product over axes), divided by the model's largest", 0.0, 1.0),
    ("params", "log(1 + parameters), divided by the model's largest", 0.0, 1.0),
    ("macs", "log(1 + MACs), divided by the model's largest", 0.0, 1.0),
    ("cost_share", "the layer's share of the model's W8A8 cost in the budget metric", 0.0, 1.0),
    ("prev_w_bits", "previous layer's weight bits actually used, 0 (lowest candidate) to 1 (highest)", 0.0, 1.0),
    ("prev_a_bits", "previous layer's activation bits actually used, 0 (lowest) to 1 (highest)", 0.0, 1.0),
    ("spent", "cost spent so far (fixed layers included), as a fraction of the budget", 0.0, 2.0),
    ("remaining_min", "least cost this and the later layers need, as a fraction of the budget", 0.0, 2.0),
)


class BitWidthEnv(gym.Env):
    """Choose the weight and activation bit-width of every quantizable layer of a network, under a budget.

    ## Description
    An episode walks the searched layers of the model in execution order. At each step the agent picks the
    bits of one layer; at the last step the whole policy is evaluated by fake quantization on the calibration
    split, and costed by the hardware model. The budget (a fraction of the W8A8 cost in ``hardware.metric``) is
    enforced as ``budget.enforcement`` says: ``project`` (default) clips each choice to the highest bits that
    still let the remaining layers fit at their lowest bits; ``wall`` lowers bits from the last layer back at the
    end of the episode (HAQ); ``penalty`` leaves the choice and lowers the reward of a policy over budget.

    ## Action Space
    ``Box(-1, 1, (2,))``: weight and activation bits, each mapped linearly onto its candidate list (rounded to
    the nearest). ``Box(-1, 1, (1,))`` for weight-only searches (``quantization.activation_bits: []``). With
    ``discrete=True``: ``MultiDiscrete([n_weight_candidates, n_activation_candidates])`` (or one entry).

    ## Observation Space
    ``Box`` of shape ``(15,)``, every component normalized over the model:

    | index | name | meaning | min | max |
    |---|---|---|---|---|
    | 0 | layer_index | position of the layer among the searched layers, 0 (first) to 1 (last) | 0 | 1 |
    | 1 | is_conv | 1 for a convolution | 0 | 1 |
    | 2 | is_linear | 1 for a linear layer | 0 | 1 |
    | 3 | is_depthwise | 1 for a depthwise convolution | 0 | 1 |
    | 4 | in_channels | input channels (features), divided by the model's largest | 0 | 1 |
    | 5 | out_channels | output channels (features), divided by the model's largest | 0 | 1 |
    | 6 | kernel | kernel taps, divided by the model's largest | 0 | 1 |
    | 7 | stride | stride (product over axes), divided by the model's largest | 0 | 1 |
    | 8 | params | log(1 + parameters), divided by the model's largest | 0 | 1 |
    | 9 | macs | log(1 + MACs), divided by the model's largest | 0 | 1 |
    | 10 | cost_share | the layer's share of the model's W8A8 cost in the budget metric | 0 | 1 |
    | 11 | prev_w_bits | previous layer's weight bits actually used, 0 (lowest candidate) to 1 (highest) | 0 | 1 |
    | 12 | prev_a_bits | previous layer's activation bits actually used, 0 (lowest) to 1 (highest) | 0 | 1 |
    | 13 | spent | cost spent so far (fixed layers included), as a fraction of the budget | 0 | 2 |
    | 14 | remaining_min | least cost this and the later layers need, as a fraction of the budget | 0 | 2 |

    ## Rewards
    Zero before the last step. At the last step, ``reward.name``: ``haq`` (0.1 x the proxy accuracy difference
    to FP32, in percent), ``mnasnet`` (accuracy x (cost / budget) ^ -0.07), ``releq`` (ReLeQ's shaped reward) or
    a user function of :class:`mpq_rl.rewards.Outcome`. With ``penalty`` enforcement, a policy over budget
    loses ``penalty`` (10 by default) times its relative excess over the budget.

    ## Starting State
    The first searched layer, nothing spent but the fixed (pinned or excluded) layers' cost, previous bits 0.

    ## Episode End
    Terminates after the last searched layer; never truncated. The final ``info`` holds ``policy`` (layer name
    -> [w_bits, a_bits], every layer), ``metrics`` (proxy metrics on the calibration split), ``proxy`` and
    ``proxy_fp32``, ``cost`` and ``cost_ratio`` (latency, energy, size, bops; absolute and as fractions of
    W8A8), ``within_budget``, ``projected`` (whether the budget changed any choice) and ``projected_layers``.

    ## Arguments
    ``config``: a YAML path, a mapping or a :class:`~mpq_rl.config.RunConfig` (defaults: the digits workload).
    ``workload``, ``costs``, ``evaluator``: pieces already built (e.g. a model and data from Python, see
    :func:`mpq_rl.workload.assemble_workload`); whatever is not given is built from ``config``. With both a
    workload and a config, the workload decides which layers are searched and the config everything else.
    ``discrete``: use the ``MultiDiscrete`` action space. ``penalty``: the reward penalty for ``penalty``
    enforcement.

    ## Version History
    * v0: first version.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        config: str | Path | dict[str, Any] | RunConfig | None = None,
        *,
        workload: Workload | None = None,
        costs: CostTable | None = None,
        evaluator: Evaluator | None = None,
        discrete: bool = False,
        penalty: float = 10.0,
    ) -> None:
        super().__init__()
        self.config = workload.config if workload is not None and config is None else load_config(config)
        self.workload = workload if workload is not None else load_workload(self.config)
        self.costs = costs if costs is not None else build_cost_table(self.workload.layers, self.config.hardware)
        self._owns_evaluator = evaluator is None
        self.evaluator = evaluator if evaluator is not None else Evaluator(self.workload)
        self.reward_fn = build_reward(self.config.reward)
        self.enforcement = self.config.budget.enforcement
        self.penalty = penalty
        self.metric = self.config.hardware.metric
        self.budget = self._budget()
        self.budget.check_feasible()
        self.weight_only = self.config.quantization.weight_only
        self.n_steps = len(self.workload.searched)
        self.discrete = discrete
        n_w, n_a = len(self.budget.weight_bits), len(self.budget.activation_bits)
        dims = [n_w] if self.weight_only else [n_w, n_a]
        if discrete:
            self.action_space = spaces.MultiDiscrete(dims)
        else:
            self.action_space = spaces.Box(-1.0, 1.0, (len(dims),), dtype=np.float32)
        low = np.array([f[2] for f in OBSERVATION_FEATURES], dtype=np.float32)
        high = np.array([f[3] for f in OBSERVATION_FEATURES], dtype=np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self._features = self._static_features()
        self._choices: list[Choice] = []
        self._spent = self.budget.fixed_cost
        self._projected_layers = 0

    def _budget(self) -> Budget:
        workload = self.workload
        table = self.costs.metric(self.metric)
        return Budget.from_costs(
            metric_table=table,
            table_bits=self.costs.bits,
            layer_names=self.costs.layer_names,
            searched=workload.searched,
            fixed=workload.fixed,
            weight_bits=self.config.quantization.weight_bits,
            activation_bits=self.config.quantization.activation_candidates,
            fraction=self.config.budget.fraction,
            metric=self.metric,
            reference=self.costs.reference(self.metric),
        )

    def _static_features(self) -> np.ndarray:
        """Per searched layer, the first 11 observation components (they do not change during an episode)."""
        layers = [self.workload.layers[name] for name in self.workload.searched]
        shares = self.costs.per_layer(self.costs.reference_policy(), self.metric) / self.costs.reference(self.metric)
        share_of = dict(zip(self.costs.layer_names, shares, strict=True))

        def scaled(values: list[float]) -> list[float]:
            top = max(values)
            return [v / top if top > 0 else 0.0 for v in values]

        columns = [
            [i / max(len(layers) - 1, 1) for i in range(len(layers))],
            [float(not layer.is_linear) for layer in layers],
            [float(layer.is_linear) for layer in layers],
            [float(layer.is_depthwise) for layer in layers],
            scaled([layer.in_channels for layer in layers]),
            scaled([layer.out_channels for layer in layers]),
            scaled([layer.kernel_size for layer in layers]),
            scaled([math.prod(layer.stride) for layer in layers]),
            scaled([math.log1p(layer.params) for layer in layers]),
            scaled([math.log1p(layer.macs) for layer in layers]),
            [min(max(float(share_of[layer.name]), 0.0), 1.0) for layer in layers],
        ]
        return np.array(columns, dtype=np.float32).T

    def _observation(self) -> np.ndarray:
        step = min(len(self._choices), self.n_steps - 1)
        limit = self.budget.fraction * self.budget.reference
        if self._choices:
            w, a = self._choices[-1]
            prev_w = w / max(len(self.budget.weight_bits) - 1, 1)
            prev_a = a / max(len(self.budget.activation_bits) - 1, 1)
        else:
            prev_w = prev_a = 0.0
        remaining = self.budget.suffix_min[len(self._choices)]
        dynamic = [prev_w, prev_a, min(self._spent / limit, 2.0), min(remaining / limit, 2.0)]
        return np.concatenate([self._features[step], np.array(dynamic, dtype=np.float32)])

    def _to_choice(self, action: np.ndarray) -> Choice:
        action = np.asarray(action).reshape(-1)
        sizes = [len(self.budget.weight_bits), len(self.budget.activation_bits)]
        if self.discrete:
            indices = [int(v) for v in action]
        else:
            clipped = np.clip(action.astype(np.float64), -1.0, 1.0)
            indices = [int(round((v + 1.0) / 2.0 * (n - 1))) for v, n in zip(clipped, sizes, strict=False)]
        if self.weight_only:
            indices.append(0)
        return indices[0], indices[1]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._choices = []
        self._spent = self.budget.fixed_cost
        self._projected_layers = 0
        return self._observation(), {}

    def step(self, action: np.ndarray):
        if len(self._choices) >= self.n_steps:
            raise RuntimeError("step() called after the episode ended: call reset() first")
        step = len(self._choices)
        asked = self._to_choice(action)
        choice = asked
        if self.enforcement == "project":
            choice = self.budget.project(step, self._spent, asked)
            self._projected_layers += choice != asked
        self._choices.append(choice)
        self._spent += self.budget.cost(step, choice)
        if len(self._choices) < self.n_steps:
            return self._observation(), 0.0, False, False, {}
        reward, info = self._finish()
        return self._observation(), reward, True, False, info

    def _finish(self) -> tuple[float, dict[str, Any]]:
        choices = self._choices
        if self.enforcement == "wall":
            lowered = self.budget.lower_to_fit(choices)
            self._projected_layers = sum(a != b for a, b in zip(lowered, choices, strict=True))
            choices = lowered
        searched = {name: self.budget.bits(c) for name, c in zip(self.workload.searched, choices, strict=True)}
        policy = self.workload.full_policy(searched)
        metrics = self.evaluator.evaluate(policy)
        totals = self.costs.totals(policy)
        ratios = self.costs.ratios(policy)
        within = ratios[self.metric] <= self.budget.fraction * (1.0 + 1e-9)
        proxy = proxy_value(metrics, self.config.proxy)
        proxy_fp32 = proxy_value(self.evaluator.fp32, self.config.proxy)
        outcome = Outcome(proxy, proxy_fp32, ratios[self.metric], self.budget.fraction)
        reward = float(self.reward_fn(outcome))
        if self.enforcement == "penalty" and not within:
            reward -= self.penalty * (ratios[self.metric] / self.budget.fraction - 1.0)
        info = {
            "policy": {name: [int(w), int(a)] for name, (w, a) in policy.items()},
            "metrics": metrics,
            "proxy": proxy,
            "proxy_fp32": proxy_fp32,
            "cost": totals,
            "cost_ratio": ratios,
            "within_budget": bool(within),
            "projected": self._projected_layers > 0,
            "projected_layers": int(self._projected_layers),
        }
        return reward, info

    def close(self) -> None:
        """Release the model (restored to FP32) if this environment built the evaluator itself."""
        if self._owns_evaluator:
            self.evaluator.close()
        super().close()
