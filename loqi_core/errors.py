"""Errors loqi raises on purpose: each one names the file, field or plugin at fault."""


class LoqiError(Exception):
    """A user-facing error; the CLI prints its message without a traceback."""


class PluginLoadError(LoqiError):
    """A plugin failed to import, or declared a hook loqi does not know."""


class DuplicateNameError(LoqiError):
    """Two plugins registered the same name under one extension point."""


class UnknownNameError(LoqiError):
    """A name that no installed plugin registered."""


class ConfigError(LoqiError):
    """A config file or CLI override that does not validate."""


class DataError(LoqiError):
    """A dataset on disk that is missing, malformed or unreadable."""


class WeightsError(LoqiError):
    """Weights that cannot be found, downloaded, verified or loaded."""
