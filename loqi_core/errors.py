"""Errors loqi raises on purpose: each one names the file, field or plugin at fault."""

import errno


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


def one_line(exc: BaseException) -> str | None:
    """The one line a user sees for a loqi error or an OS error (permission, full disk, missing file), with the
    traceback a DataLoader worker puts in the text stripped; None for any other exception (a bug: keep its traceback)."""
    from loqi_core.util.fileio import as_os_error, describe_os_error

    if isinstance(exc, LoqiError):
        message = str(exc)
        if "\nOriginal Traceback" in message:  # re-raised by a DataLoader worker: keep the error's own last line
            head, sep, tail = message.rstrip().splitlines()[-1].partition(": ")
            message = tail if sep and head.endswith(("Error", "Exception")) else head + sep + tail
        return message
    os_error = as_os_error(exc)
    if os_error is None or os_error.errno == errno.EPIPE:
        return None
    return describe_os_error(os_error)
