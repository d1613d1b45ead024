"""The figures of a run's TensorBoard dashboards (:mod:`mpq_rl.dashboards.plots`): drawn from plain numbers, used by
the run layer's dashboard (:mod:`mpq_rl.runs.dashboard`), mbppo's learning board
(:mod:`mpq_rl.agents.learning_board`) and adapt's run."""
