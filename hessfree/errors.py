"""Typed errors raised at hessfree's public boundaries.

Solver breakdowns and non-convergence are *data* (see ``hessfree.solvers.StopReason``),
never exceptions. These classes are for input that cannot be used and for runtime
failures the caller must see. The CLI maps them to exit codes (see ``exit_code``).
"""


class HessfreeError(Exception):
    """Base class of every error hessfree raises on purpose."""

    exit_code = 1


class InputError(HessfreeError, ValueError):
    """An array given to a public function has the wrong shape, dtype or values."""


class DataError(HessfreeError, ValueError):
    """A dataset file or array is malformed or does not fit the model."""


class ConfigError(HessfreeError, ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""

    exit_code = 2


class CommError(HessfreeError, RuntimeError):
    """A collective failed: a rank raised, exited early, or missed the deadline."""


class DivergedError(HessfreeError, RuntimeError):
    """Training could not make progress (e.g. too many consecutive rejected steps)."""

    exit_code = 3


class CheckpointError(HessfreeError, RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to a different configuration."""
