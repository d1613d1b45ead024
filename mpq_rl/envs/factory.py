"""The environment's id and the wrapper ``gym.make("mpq_rl/BitWidth-v1", config=...)`` returns (built by
:func:`mpq_rl.runs.assembly.make_bitwidth_env`, where the config becomes a problem), so that closing the environment
closes the problem built for it."""

from __future__ import annotations

import gymnasium as gym

ENV_ID = "mpq_rl/BitWidth-v1"


class ClosesProblem(gym.Wrapper):
    """Closes the problem of the environment it wraps together with the environment (the factory built both)."""

    def close(self) -> None:
        super().close()
        self.env.unwrapped.problem.close()
