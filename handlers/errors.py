"""Typed errors of the serving side, each with the HTTP status a request or load failure maps to.

Every exception class under handlers/ lives here. The handler answers a request that fails to
decode with the error's `status` (torchserve_handler.py); raised while loading, IntegrityError
and ConfigError fail the model load instead:

  BadRequest            400  the request itself is wrong; only it fails
  UnsupportedMediaType  415  a form-encoded body, or a Content-Type neither text nor JSON
  PayloadTooLarge       413  text over the configured limit
  IntegrityError        500  model files differ from their manifest (load refused)
  SignatureError        500  archive unsigned, untrusted, or differs from its signature
  ConfigError           500  invalid handler settings (the trainer's SettingsError is one)

The trainer's errors and exit codes are in trainer/common/errors.py (handlers never import trainer).
"""


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


class UnsupportedMediaType(BadRequest):
    """A body TorchServe split into form fields; the message says how to send text instead."""

    status = 415


class PayloadTooLarge(HandlerError):
    """The text is over the configured limit."""

    status = 413


class IntegrityError(HandlerError):
    """The model files do not match their sha256 manifest: refuse to load anything."""

    status = 500


class SignatureError(IntegrityError):
    """The archive is unsigned, signed by an untrusted key, or its files differ from the list."""


class ConfigError(HandlerError):
    """The handler settings in model-config.yaml are invalid."""

    status = 500
