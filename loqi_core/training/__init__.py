"""Pieces of the distillation engine (``loqi_core.distill``): the step-indexed data pipeline, the
resumable training state and the torch.distributed setup."""
