"""Gymnasium environments of mpq_rl; ``mpq_rl/BitWidth-v0`` is registered when mpq_rl is imported."""

from mpq_rl.envs.bitwidth import BitWidthEnv

__all__ = ["BitWidthEnv"]
