"""Pieces of the distillation engine (``loqi_core.distillation``): the step-indexed data pipeline, the
resumable training state and the torch.distributed setup."""
