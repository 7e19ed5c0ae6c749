"""What a run leaves for a researcher to read: metrics.json and results.md, plots, retrieval grids and activation
maps, TensorBoard scalars. Reads evaluation results; imports nothing from the experiments above it."""
