"""Typed errors, each with the HTTP status a request or load failure maps to."""


class HandlerError(Exception):
    """Base class: a failure that has an HTTP status and a message naming the problem."""

    status: int = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(HandlerError):
    """The request itself is wrong (empty, undecodable, wrong type); only it fails."""

    status = 400


class PayloadTooLarge(HandlerError):
    """The text is over the configured limit."""

    status = 413


class IntegrityError(HandlerError):
    """The model files do not match their sha256 manifest: refuse to load anything."""

    status = 500


class ConfigError(HandlerError):
    """The handler settings in model-config.yaml are invalid."""

    status = 500
