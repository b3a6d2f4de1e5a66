"""The one exception family. The CLI prints these as a single `Error: ...` line (exit 1)."""


class AlexNetDeployError(Exception):
    """Base class: a failure the user can act on. The message says what failed,
    what was expected and, where it helps, what to run."""


class DataError(AlexNetDeployError):
    """An image folder, image file or dataset layout is unusable."""


class CheckpointError(AlexNetDeployError):
    """A checkpoint is missing, truncated, or does not match the requested architecture."""


class ExportError(AlexNetDeployError):
    """Export or its verification failed (parity below threshold, unwritable output, ...)."""


class CalibrationError(AlexNetDeployError):
    """INT8 calibration failed or missed its accuracy budget."""


class BundleError(AlexNetDeployError):
    """A bundle is malformed, tampered with, escapes its directory, or has an unknown schema."""


class BackendUnavailable(AlexNetDeployError):
    """A backend cannot run here (missing package, no GPU, missing artifact)."""


class MissingDependency(BackendUnavailable):
    """An optional dependency is not installed; the message names the package or extra."""
