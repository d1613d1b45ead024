"""Gymnasium environments of mpq_rl; importing this package registers ``mpq_rl/BitWidth-v1``."""

import gymnasium

from mpq_rl.envs.bitwidth import BitWidthEnv
from mpq_rl.envs.factory import ENV_ID
from mpq_rl.envs.learned import EpisodeModel, LearnedRewardEnv
from mpq_rl.envs.observation import ObservationBuilder

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="mpq_rl.runs.assembly:make_bitwidth_env")

__all__ = ["ENV_ID", "BitWidthEnv", "EpisodeModel", "LearnedRewardEnv", "ObservationBuilder"]
