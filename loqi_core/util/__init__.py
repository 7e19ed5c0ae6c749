"""Small services every wing uses: atomic file writes, devices, CPU budgets, run-directory locks, run.log,
progress bars, optional TensorBoard, source digests. Imports nothing of loqi but ``errors``."""
