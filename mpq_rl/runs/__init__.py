"""The run layer, above the searchers: the search loop with its resume, the run folder, the recorder of episodes,
TensorBoard charts, progress bar, held-out scores, summary, and comparisons of several searchers."""
