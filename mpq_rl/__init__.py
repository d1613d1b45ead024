"""mpq_rl: mixed-precision quantization search with reinforcement learning under hardware budgets."""

import gymnasium

__version__ = "0.1.0"

if "mpq_rl/BitWidth-v1" not in gymnasium.registry:
    gymnasium.register(id="mpq_rl/BitWidth-v1", entry_point="mpq_rl.runs.assembly:make_bitwidth_env")
