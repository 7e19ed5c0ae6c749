"""Pieces of the distillation engine (``loqi_core.training.engine``): the step-indexed data pipeline, the
resumable training state and the torch.distributed setup."""
