"""An example loss: 1 − cosine similarity of student and teacher descriptors, averaged over the batch."""

import torch.nn.functional as F


class ExampleLoss:
    def __init__(self, params) -> None:
        self.params = params

    def __call__(self, batch):
        teacher = batch.teacher_desc.detach()  # the teacher is a fixed target: no gradient flows into it
        return self.params.scale * (1 - F.cosine_similarity(batch.student_desc, teacher, dim=1)).mean()
