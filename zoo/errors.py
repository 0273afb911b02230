"""Errors the zoo raises. Each message names the problem and the fix."""


class ZooError(Exception):
    """Base class of every error raised by the zoo."""


class UnknownModelError(ZooError, ValueError):
    """An architecture or checkpoint id the registry does not know."""


class InvalidSourceError(ZooError, ValueError):
    """A model source string, repo id or path that is malformed or unsafe."""


class UnsafeFormatError(ZooError, ValueError):
    """Weights in a format that can execute code on load (pickle)."""


class WeightsNotFoundError(ZooError, FileNotFoundError):
    """No weights could be found in any of the places tried."""


class IntegrityError(ZooError, ValueError):
    """A weights file whose bytes are not the recorded ones (truncated, altered, corrupt)."""


class ShapeMismatchError(ZooError, ValueError):
    """Weights that do not fit the architecture built from config.json."""


class ConfigError(ZooError, ValueError):
    """A config.json that is malformed or describes an impossible model."""


class DataError(ZooError, ValueError):
    """A dataset that is missing, truncated or malformed."""


class InputError(ZooError, ValueError):
    """An input tensor a model cannot take: not (N, C, H, W), wrong dtype, channel count or spatial size."""


class MissingExtraError(ZooError, ImportError):
    """An optional dependency that is not installed; the message names the pyproject extra that installs it."""

    def __init__(self, package: str, extra: str, needed_for: str) -> None:
        super().__init__(
            f'{needed_for} needs {package}, an optional dependency: pip install "compressed-cnn-zoo[{extra}]"',
            name=package,
        )
        self.extra = extra
