"""The extension points of loqi: every plugin implements one or more of these hooks.

Each hook hands the plugin a ``register`` callback; the plugin calls it once per thing it provides.
Register factories plus a pydantic params model, never built objects, and import torch inside the
factories only, so that ``loqi --help`` and ``loqi plugins`` stay fast.
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("loqi")
hookimpl = HookimplMarker("loqi")


@hookspec
def loqi_register_encoders(register):
    """Register encoders: ``register(EncoderSpec(...))``; a method's encoder carries its weights, preprocessing, trainable layers and default loss."""


@hookspec
def loqi_register_aggregators(register):
    """Register aggregators: ``register(AggregatorSpec(...))``; a method registers its aggregator under the method's name."""


@hookspec
def loqi_register_degradations(register):
    """Register degradations: ``register(DegradationSpec(...))`` with a spec grammar such as ``jpeg(?P<quality>\\d+)``."""


@hookspec
def loqi_register_losses(register):
    """Register distillation losses: ``register(LossSpec(...))``; names compose as ``"ickd+0.5*mse+triplet"``."""


@hookspec
def loqi_register_datasets(register):
    """Register datasets: ``register(DatasetSpec(...))`` with a test-set and/or train-set loader."""


@hookspec
def loqi_register_commands(cli):
    """Add click commands or groups to the ``loqi`` command line: ``cli.add_command(...)``."""
