"""What a run shows in TensorBoard beyond its scalars: the chart layout, the Pareto view, the layer x episode bits
heatmap, the held-out table, and the model-based searcher's view of its own learning."""
