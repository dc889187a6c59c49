"""User-facing error types. Their messages name the problem and the fix; the CLI prints them without a traceback."""

from __future__ import annotations

__all__ = ["MRQUserError", "ConfigurationError", "EnvironmentNameError", "EnvironmentSetupError", "CheckpointError"]


class MRQUserError(Exception):
    """Bad input from the user (config, environment name, checkpoint, missing system dependency)."""


class ConfigurationError(MRQUserError, ValueError):
    """An option value outside its valid range (the message names the option and the allowed values)."""


class EnvironmentNameError(MRQUserError, ValueError):
    """An unknown or malformed environment name (the message lists the valid forms)."""


class EnvironmentSetupError(MRQUserError, RuntimeError):
    """A simulator that cannot start here: missing GL backend, missing ROM, missing package."""


class CheckpointError(MRQUserError, RuntimeError):
    """A missing, corrupt or mismatched checkpoint or replay-buffer sidecar."""
