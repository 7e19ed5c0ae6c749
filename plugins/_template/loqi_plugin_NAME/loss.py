"""An example loss: 1 − cosine similarity of student and teacher descriptors, averaged over the batch."""

import torch.nn.functional as F


class ExampleLoss:
    def __init__(self, params) -> None:
        self.params = params

    def __call__(self, batch):
        return self.params.scale * (1 - F.cosine_similarity(batch.student_desc, batch.teacher_desc, dim=1)).mean()
