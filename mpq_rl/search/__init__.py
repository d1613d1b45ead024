"""The search core: the problem and its budget rules, the cached evaluator and its worker pool, typed episodes, rewards
and proxy metrics, the recorder and TensorBoard logger, the run folder, the search loop with its held-out scores and
summary, and multi-searcher comparisons."""
