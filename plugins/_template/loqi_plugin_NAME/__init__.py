"""loqi plugin NAME: registers its parts through loqi's hooks. Keep this module free of torch imports."""

from loqi_core.plugin import LossSpec, Params, hookimpl


class ExampleParams(Params):
    scale: float = 1.0


def _build(params: ExampleParams):
    from loqi_plugin_NAME.loss import ExampleLoss  # heavy imports live in the module the factory loads

    return ExampleLoss(params)


@hookimpl
def loqi_register_losses(register):
    register(LossSpec("NAME", _build, ExampleParams, "Cosine distance between student and teacher descriptors"))
