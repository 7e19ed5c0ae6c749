"""loqi: knowledge distillation that makes visual place recognition work on low-quality images."""

from loqi_core.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
