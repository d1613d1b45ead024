"""An episode: one scored policy, as every searcher, the environment and the recorder see it.

:meth:`SearchProblem.score <mpq_rl.search.problem.SearchProblem.score>` makes one; the environment hands it out as its
final ``info`` (:meth:`Episode.to_json`), the recorder writes it as a row of ``episodes.csv``
(:class:`EpisodeTable`) and reads it back on resume. Bits are ``(w_bits, a_bits)`` tuples inside the program and
``[w_bits, a_bits]`` lists in JSON and in the environment's ``info``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mpq_rl.quantization.policy import Policy


@dataclass(frozen=True)
class Episode:
    """One scored policy."""

    reward: float
    policy: Policy
    """Every layer's bits, in execution order."""
    metrics: dict[str, float]
    """Proxy metrics on the calibration split."""
    proxy: float
    """The configured proxy, higher is better."""
    proxy_fp32: float
    cost: dict[str, float]
    """latency, energy, size and bops of the whole model (NaN where the hardware defines none)."""
    cost_ratio: dict[str, float]
    """The same as fractions of W8A8."""
    within_budget: bool
    projected_layers: int = 0
    """Layers whose choice the budget changed."""

    @property
    def projected(self) -> bool:
        """Whether the budget changed any choice."""
        return self.projected_layers > 0

    def to_json(self) -> dict[str, Any]:
        """The episode as plain JSON data (the environment's final ``info``)."""
        return {
            "reward": self.reward,
            "policy": {name: [int(w), int(a)] for name, (w, a) in self.policy.items()},
            "metrics": self.metrics,
            "proxy": self.proxy,
            "proxy_fp32": self.proxy_fp32,
            "cost": self.cost,
            "cost_ratio": self.cost_ratio,
            "within_budget": self.within_budget,
            "projected": self.projected,
            "projected_layers": self.projected_layers,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Episode:
        """The episode of :meth:`to_json`'s data (keys it does not write, such as Gymnasium's, are ignored)."""
        return cls(
            reward=float(data["reward"]),
            policy={name: (int(bits[0]), int(bits[1])) for name, bits in data["policy"].items()},
            metrics=dict(data["metrics"]),
            proxy=float(data["proxy"]),
            proxy_fp32=float(data["proxy_fp32"]),
            cost=dict(data["cost"]),
            cost_ratio=dict(data["cost_ratio"]),
            within_budget=bool(data["within_budget"]),
            projected_layers=int(data["projected_layers"]),
        )

    def sections(self, number: int) -> dict[str, Any]:
        """What ``policy.json`` and ``summary.json`` say about the policy of episode ``number`` besides its bits."""
        return {
            "episode": number,
            "reward": self.reward,
            "proxy": self.proxy,
            "metrics": self.metrics,
            "cost": self.cost,
            "cost_ratio": self.cost_ratio,
        }


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _bool(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError(f"not a boolean: {text!r}")
    return text == "true"


class EpisodeTable:
    """The columns of ``episodes.csv`` for one problem, and the conversion of an episode to a row and back."""

    def __init__(self, layer_names: Sequence[str], metrics: Sequence[str], costs: Sequence[str]) -> None:
        self.layer_names, self.metrics, self.costs = tuple(layer_names), tuple(metrics), tuple(costs)
        self.header = (
            ["episode", "reward", "proxy"]
            + [f"metric:{m}" for m in self.metrics]
            + [f"cost:{c}" for c in self.costs]
            + [f"cost_ratio:{c}" for c in self.costs]
            + ["within_budget", "projected", "projected_layers"]
            + [f"w:{n}" for n in self.layer_names]
            + [f"a:{n}" for n in self.layer_names]
        )

    @classmethod
    def for_episode(cls, episode: Episode) -> EpisodeTable:
        return cls(list(episode.policy), sorted(episode.metrics), sorted(episode.cost))

    def row(self, number: int, episode: Episode) -> list[str]:
        values: list[Any] = [number, float(episode.reward), float(episode.proxy)]
        values += [float(episode.metrics[m]) for m in self.metrics]
        values += [float(episode.cost[c]) for c in self.costs]
        values += [float(episode.cost_ratio[c]) for c in self.costs]
        values += [bool(episode.within_budget), episode.projected, int(episode.projected_layers)]
        values += [int(episode.policy[n][0]) for n in self.layer_names]
        values += [int(episode.policy[n][1]) for n in self.layer_names]
        return [_fmt(v) for v in values]

    def episode(self, row: dict[str, str], proxy_fp32: float) -> tuple[int, Episode]:
        """The episode number and the episode of a row read back (``csv.DictReader``); a ``projected`` cell that
        disagrees with ``projected_layers`` is a ValueError."""
        episode = Episode(
            reward=float(row["reward"]),
            policy={n: (int(row[f"w:{n}"]), int(row[f"a:{n}"])) for n in self.layer_names},
            metrics={m: float(row[f"metric:{m}"]) for m in self.metrics},
            proxy=float(row["proxy"]),
            proxy_fp32=proxy_fp32,
            cost={c: float(row[f"cost:{c}"]) for c in self.costs},
            cost_ratio={c: float(row[f"cost_ratio:{c}"]) for c in self.costs},
            within_budget=_bool(row["within_budget"]),
            projected_layers=int(row["projected_layers"]),
        )
        if _bool(row["projected"]) != episode.projected:
            raise ValueError("projected disagrees with projected_layers")
        return int(row["episode"]), episode
