from loqi_core.testing import LossTests


class TestExampleLoss(LossTests):
    loss = "NAME"
