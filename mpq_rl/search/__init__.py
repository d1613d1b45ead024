"""The search core, which knows nothing of runs: the problem and its budget rules, the cached evaluator and its worker
pool, typed episodes, rewards and proxy metrics, and the interface searchers implement (:mod:`.searcher`)."""
