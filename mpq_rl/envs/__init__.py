"""Gymnasium environments of mpq_rl; ``mpq_rl/BitWidth-v1`` is registered when mpq_rl is imported."""

from mpq_rl.envs.bitwidth import BitWidthEnv
from mpq_rl.envs.factory import ENV_ID
from mpq_rl.envs.learned import EpisodeModel, LearnedRewardEnv
from mpq_rl.envs.observation import ObservationBuilder

__all__ = ["ENV_ID", "BitWidthEnv", "EpisodeModel", "LearnedRewardEnv", "ObservationBuilder"]
