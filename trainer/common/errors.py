"""Typed errors of the trainer CLI, and the exit code each maps to (the serving side's errors,
with their HTTP statuses, are in handlers/errors.py).

`driftserve <verb>` (`python -m trainer <verb>`) exits with:
  0  success;
  2  an expected error (EXPECTED_ERRORS): a user's mistake (bad data, settings, archive, server
     answer), printed as one `error: ...` line on stderr, no traceback;
  3  EXIT_WEAK: train/adapt wrote the run dir but the model is weak (trainer.model.quality);
  anything else is a bug and keeps its traceback (Python's exit 1).
Verbs with their own exit codes keep them beside the verb: drift (trainer/ops/drift_cli.py) and
rollout (trainer/ops/rollout.py).
"""

from handlers.errors import ConfigError, HandlerError

EXIT_OK = 0
EXIT_ERROR = 2  # an expected error: one line on stderr
EXIT_WEAK = 3  # the run dir is written, but marked weak; archive/rollout refuse it
EXIT_BUG = 1  # what Python exits with on an uncaught exception (the traceback is kept)


class DataError(ValueError):
    """A bad data row or file; the message names the file, the line and the reason."""


class SettingsError(ConfigError, ValueError):
    """Invalid settings; the message lists every bad field at once.

    The trainer's name for the handlers' ConfigError (one idea): `except ConfigError` catches it
    too, and it stays a ValueError as before."""


class ClientError(RuntimeError):
    """A TorchServe call failed; carries the HTTP status (0 when the server is unreachable)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class AuthorizationError(ClientError):
    """The server refused the key: the wrong key file, or another server than meant."""


class RolloutError(ValueError):
    """A rollout that cannot start or continue; nothing further is changed on the server."""


class ReplayBufferError(ValueError):
    """A replay buffer file that cannot be read; the message names the file."""


class ServeError(RuntimeError):
    """A server that is not there, or already there."""


# A user's mistake: one line, exit 2. HandlerError covers the handlers' errors the trainer
# meets (ConfigError, IntegrityError, SignatureError, ...), SettingsError included.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    DataError, SettingsError, HandlerError, ClientError, FileNotFoundError, RolloutError,
    ReplayBufferError, ServeError)


def exit_code_for(exc: BaseException) -> int:
    """EXIT_ERROR for an expected error; EXIT_BUG for anything else (which the CLI re-raises)."""
    return EXIT_ERROR if isinstance(exc, EXPECTED_ERRORS) else EXIT_BUG
