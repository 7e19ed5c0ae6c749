"""loqi: knowledge distillation that makes visual place recognition work on low-quality images."""

from loqi_core.hookspecs import hookimpl
from loqi_core.training.cpus import passive_waits

passive_waits()  # before torch is imported: idle torch threads sleep instead of spinning (training/cpus.py)

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
