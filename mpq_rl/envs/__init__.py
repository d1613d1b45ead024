"""Gymnasium environments of mpq_rl; importing this package registers ``mpq_rl/BitWidth-v0``."""

import gymnasium

from mpq_rl.envs.bitwidth import BitWidthEnv

if "mpq_rl/BitWidth-v0" not in gymnasium.registry:
    gymnasium.register(id="mpq_rl/BitWidth-v0", entry_point="mpq_rl.envs.bitwidth:BitWidthEnv")

__all__ = ["BitWidthEnv"]
