"""Distillation: ``recipe`` (what a run's config makes of a training: spec, loss, trainable layers, views, data),
``engine`` (the training loop; ``_Trainer._step`` is where the loss meets the teacher and the student), ``data`` (the
step-indexed batches, degraded in workers), ``state`` (resumable checkpoints) and ``dist`` (torch.distributed)."""
