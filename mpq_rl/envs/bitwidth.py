"""The bit-width environment: one step per quantizable layer, choosing its weight and activation bits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mpq_rl.envs.observation import FeatureSource, ObservationBuilder
from mpq_rl.quantization.formats import Precision
from mpq_rl.search.budget import Choice
from mpq_rl.search.problem import SearchProblem
from mpq_rl.search.sensitivity import Sensitivity


class _Axis:
    """One side's candidates (precision codes) seen as bit-widths x formats, for actions that pick both."""

    def __init__(self, codes: Sequence[int], formats: Sequence[str]) -> None:
        precisions = [Precision.of(c) for c in codes]
        self.bits = sorted({p.bits for p in precisions})
        self.positions = [self.bits.index(p.bits) / max(len(self.bits) - 1, 1) for p in precisions]
        """Per candidate, its bit-width's place among the bit-widths, 0 to 1 (the observed previous bits)."""
        self._grid = []
        for name in formats:
            own = [i for i, p in enumerate(precisions) if p.format == name] or list(range(len(codes)))
            self._grid.append([min(own, key=lambda i, b=b: (abs(precisions[i].bits - b), i)) for b in self.bits])

    def candidate(self, format_index: int, bits_index: int) -> int:
        """The candidate of that format nearest to that bit-width."""
        return self._grid[format_index][bits_index]


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
    ``discrete=True``: ``MultiDiscrete([n_weight_candidates, n_activation_candidates])`` (or one entry). An action
    outside its space (an index out of range or not whole, another shape, NaN, ``None`` or text) is a
    ``ValueError`` naming the space; only continuous values beyond [-1, 1] are clipped.

    When ``quantization.formats`` lists more than one number format (:mod:`mpq_rl.quantization.formats`), the action
    gains a
    format per side, and the bit components range over the bit-widths instead of the candidates:

    | index | name | meaning | shown |
    |---|---|---|---|
    | 0 | w_bits | weight bit-width, onto the sorted bit-widths | always |
    | 1 | a_bits | activation bit-width, onto the sorted bit-widths | unless weight-only |
    | next | w_format | weight format, onto ``quantization.formats`` in order | with several formats |
    | next | a_format | activation format, onto ``quantization.formats`` | with several formats, unless weight-only |

    ``MultiDiscrete([n_bits, n_bits, n_formats, n_formats])`` with ``discrete=True``. A format without the chosen
    bit-width (fp and flint start at 3 bits) takes its nearest one. Projection onto the budget may change a
    layer's format as well as its bits (it searches the candidates below the asked one, formats in list order).

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
    | 11 | prev_w_bits | previous layer's weight bits actually used, 0 (lowest bit-width) to 1 (highest) | 0 | 1 |
    | 12 | prev_a_bits | previous layer's activation bits actually used, 0 (lowest) to 1 (highest) | 0 | 1 |
    | 13 | spent | cost spent so far (fixed layers included), as a fraction of the budget | 0 | 2 |
    | 14 | remaining_min | least cost this and the later layers need, as a fraction of the budget | 0 | 2 |

    Optional components, appended in this order when their argument is given
    (:class:`~mpq_rl.envs.observation.ObservationBuilder` builds them):

    | index | name | meaning | min | max |
    |---|---|---|---|---|
    | 15+k | w_error_k | ``sensitivity``: relative error of the layer's weight at weight candidate k | 0 | 1 |
    | 15+n_w+k | a_error_k | ``sensitivity``: relative error of its input at activation candidate k | 0 | 1 |
    | next | m_k | ``model`` (:class:`~mpq_rl.envs.learned.LearnedRewardEnv`): its k-th feature of the layer | 0 | 1 |
    | last | budget | ``budgets``: this episode's budget, as a fraction of W8A8 | 0 | 2 |

    Errors map to ``(log10(err) + 6) / 6`` clipped to [0, 1] (see :class:`mpq_rl.search.sensitivity.Sensitivity`).

    ## Rewards
    Zero before the last step. At the last step, ``reward.name``: ``haq`` (0.1 x the proxy accuracy difference
    to FP32, in percent), ``mnasnet`` (accuracy x (cost / budget) ^ -0.07), ``releq`` (ReLeQ's shaped reward) or
    a user function of :class:`mpq_rl.search.rewards.Outcome`. With ``penalty`` enforcement, a policy over budget
    loses :data:`~mpq_rl.search.enforcement.PENALTY_PER_EXCESS` (10) times its relative excess over the budget.
    :class:`~mpq_rl.envs.learned.LearnedRewardEnv` rewards every step by a learned model instead and evaluates
    nothing.

    ## Starting State
    The first searched layer, nothing spent but the fixed (pinned or excluded) layers' cost, previous bits 0.

    ## Episode End
    Terminates after the last searched layer; never truncated. ``step()`` before ``reset()``, after the last
    step, or after ``close()`` is a ``RuntimeError``. The final ``info`` holds ``policy`` (layer name
    -> [w_bits, a_bits], every layer), ``metrics`` (proxy metrics on the calibration split), ``proxy`` and
    ``proxy_fp32``, ``cost`` and ``cost_ratio`` (latency, energy, size, bops; absolute and as fractions of
    W8A8), ``within_budget``, ``projected`` (whether the budget changed any choice) and ``projected_layers``.

    ## Arguments
    ``problem``: the :class:`~mpq_rl.search.problem.SearchProblem` played (possibly shared with other searchers; the
    environment never closes it). ``gym.make("mpq_rl/BitWidth-v1", config=...)`` builds one from a config through
    :func:`mpq_rl.runs.assembly.make_bitwidth_env`, and closes it with the environment.
    ``discrete``: use the ``MultiDiscrete`` action space.
    ``sensitivity``: measured quantization errors of the searched layers, observed per candidate.
    ``budgets``: budget-conditioned episodes: each ``reset`` draws the episode's budget from this list (or takes
    ``options={"budget": fraction}``), projects into it, and shows it in the observation.

    ## Version History
    * v1: the format components of the action (with several ``quantization.formats``); made from a problem, or
      from a config through the factory; ``close()`` leaves a problem it was given open.
    * v0: first version (integer formats only; the environment built its problem from a config itself).
    """

    metadata = {"render_modes": []}

    model: FeatureSource | None = None
    """What a subclass observes besides the layer (see :class:`~mpq_rl.envs.learned.LearnedRewardEnv`)."""

    def __init__(
        self,
        problem: SearchProblem,
        *,
        discrete: bool = False,
        sensitivity: Sensitivity | None = None,
        budgets: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.problem = problem
        self.workload = problem.workload
        self.budget = problem.budget
        self.weight_only = problem.weight_only
        self.n_steps = len(self.workload.searched)
        self.discrete = discrete
        n_w, n_a = len(self.budget.weight_codes), len(self.budget.activation_codes)
        formats = problem.formats
        axes = [_Axis(self.budget.weight_codes, formats), _Axis(self.budget.activation_codes, formats)]
        self._axes = axes[:1] if self.weight_only else axes
        self._with_formats = len(formats) > 1
        if self._with_formats:
            dims = [len(axis.bits) for axis in self._axes] + [len(formats)] * len(self._axes)
        else:
            dims = [n_w] if self.weight_only else [n_w, n_a]
        if discrete:
            self.action_space = spaces.MultiDiscrete(dims)
        else:
            self.action_space = spaces.Box(-1.0, 1.0, (len(dims),), dtype=np.float32)
        self.budgets = {f: self.budget.with_fraction(f) for f in budgets or ()}
        self._observe = ObservationBuilder(
            problem, sensitivity=sensitivity, model=self.model, with_budget=bool(self.budgets)
        )
        self.observation_space = self._observe.space
        # A plain-Python copy for step(): numpy's per-call overhead on arrays this small dominated the step time.
        self._suffix_min: list[float] = self.budget.suffix_min.tolist()
        self._sizes = tuple(dims)
        self._previous = (axes[0].positions, axes[1].positions)
        self._choices: list[Choice] = []
        self._spent = self.budget.fixed_cost
        self._projected_layers = 0
        self._started = self._closed = False

    @property
    def fraction(self) -> float:
        """This episode's budget, as a fraction of the W8A8 cost."""
        return self.budget.fraction

    def _observation(self) -> np.ndarray:
        step = min(len(self._choices), self.n_steps - 1)
        limit = self.budget.fraction * self.budget.reference
        if self._choices:
            w, a = self._choices[-1]
            prev_w, prev_a = self._previous[0][w], self._previous[1][a]
        else:
            prev_w = prev_a = 0.0
        remaining = self._suffix_min[len(self._choices)]
        dynamic = [prev_w, prev_a, min(self._spent / limit, 2.0), min(remaining / limit, 2.0)]
        return self._observe(step, dynamic, self.budget.fraction)

    def _to_choice(self, action: np.ndarray) -> Choice:
        """The candidate indices of an action; an action outside the action space is a ValueError naming it (an
        index is never wrapped around, a non-finite value never clipped)."""
        array = np.asarray(action) if isinstance(action, np.ndarray | list | tuple) else None
        if array is None or array.dtype.kind not in "iuf":
            raise ValueError(f"action {action!r} is not an array of numbers: {self._expected()}")
        if array.shape != self.action_space.shape:
            raise ValueError(f"action {action!r} has shape {array.shape}: {self._expected()}")
        values = array.tolist()
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"action {action!r} is not finite: {self._expected()}")
        if self.discrete:
            if not all(v == int(v) and 0 <= v < n for v, n in zip(values, self._sizes, strict=False)):
                raise ValueError(f"action {action!r} is not a candidate index: {self._expected()}")
            indices = [int(v) for v in values]
        else:
            clipped = [min(max(v, -1.0), 1.0) for v in values]
            indices = [int(round((v + 1.0) / 2.0 * (n - 1))) for v, n in zip(clipped, self._sizes, strict=False)]
        if self._with_formats:
            sides = len(self._axes)
            indices = [axis.candidate(indices[i + sides], indices[i]) for i, axis in enumerate(self._axes)]
        if self.weight_only:
            indices.append(0)
        return indices[0], indices[1]

    def _expected(self) -> str:
        if self.discrete:
            ranges = ", ".join(f"0..{n - 1}" for n in self._sizes[: self.action_space.shape[0]])
            return f"the action space {self.action_space} takes one whole index per entry ({ranges})"
        return f"the action space {self.action_space} takes {self.action_space.shape[0]} finite numbers in [-1, 1]"

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self.budgets:
            asked = (options or {}).get("budget")
            if asked is None:
                fractions = list(self.budgets)
                asked = fractions[int(self.np_random.integers(len(fractions)))]
            if asked not in self.budgets:
                raise ValueError(f"budget {asked!r} is not one of this environment's budgets {list(self.budgets)}")
            self.budget = self.budgets[asked]
        if self._closed:
            raise RuntimeError("reset() called on a closed environment: make a new one")
        self._choices = []
        self._spent = self.budget.fixed_cost
        self._projected_layers = 0
        self._started = True
        return self._observation(), {}

    def step(self, action: np.ndarray):
        if self._closed:
            raise RuntimeError("step() called on a closed environment: make a new one")
        if not self._started:
            raise RuntimeError("step() called before reset(): call reset() to start an episode")
        if len(self._choices) >= self.n_steps:
            raise RuntimeError("step() called after the episode ended: call reset() first")
        step = len(self._choices)
        choice, projected = self._choose(step, action)
        self._projected_layers += projected
        self._choices.append(choice)
        self._spent += self.budget.cost(step, choice)
        reward = self._step_reward(step, choice)
        if len(self._choices) < self.n_steps:
            return self._observation(), reward, False, False, {}
        reward, info = self._finish(reward)
        return self._observation(), reward, True, False, info

    def _step_reward(self, step: int, choice: Choice) -> float:
        """The reward of ``choice`` at ``step`` before the episode is scored: none."""
        return 0.0

    def _finish(self, reward: float) -> tuple[float, dict[str, Any]]:
        """The last step's reward and info: the policy scored by the problem."""
        episode = self.problem.score(self._choices, self._projected_layers)
        return episode.reward, episode.to_json()

    def _choose(self, step: int, action: np.ndarray) -> tuple[Choice, bool]:
        """The choice ``action`` makes at ``step``, as the budget rule keeps it (projected under ``project``), and
        whether the rule changed it."""
        asked = self._to_choice(action)
        choice = self.problem.enforcement.choose(self.budget, step, self._spent, asked)
        return choice, choice != asked

    def pending_choices(self, action: np.ndarray) -> list[Choice] | None:
        """The choices of the policy ``action`` completes if it is this episode's last scored step (None
        otherwise), without taking the step: a vectorized environment evaluates these together first."""
        if not self._started or self._closed or len(self._choices) != self.n_steps - 1:
            return None
        return [*self._choices, self._choose(len(self._choices), action)[0]]

    def close(self) -> None:
        """Refuse to step from now on; the problem, which this environment was given, stays open (whoever built it
        closes it: :func:`~mpq_rl.runs.assembly.make_bitwidth_env`'s wrapper does)."""
        self._closed = True
        super().close()
