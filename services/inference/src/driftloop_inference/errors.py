"""What can go wrong with a request, in the data plane's own words.

The data plane and the adapters under it raise these; each entrypoint maps them
to its transport once (gRPC: `entrypoints/status.py`). A message is what the
caller reads, so it names the model, input or feature and the rule it broke.
"""

from __future__ import annotations


class InferenceError(Exception):
    """A request the data plane refuses or cannot answer."""


class ModelNotFound(InferenceError, LookupError):
    """Unknown model, version or alias."""


class ModelUnavailable(InferenceError):
    """The model is known but nothing is loaded yet."""


class InvalidInput(InferenceError, ValueError):
    """A value the model cannot take; `field` and `rule` say which and why."""

    def __init__(self, message: str, *, field: str = "", rule: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.rule = rule


class RequestTooLarge(InvalidInput):
    """A request beyond a size limit; `rule` names the setting that holds it.

    Refused whatever the load: only a smaller request can succeed."""


class UnsupportedModel(InferenceError):
    """The served model cannot answer this kind of call (its signature or outputs)."""


class MissingFeatures(InferenceError):
    """Features neither given nor looked up, with the `fail` policy."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


class Overloaded(InferenceError):
    """The inference queue is full: retry later."""


class DeadlineExpired(InferenceError):
    """The caller's deadline passed before the request could run."""


class FeaturesUnavailable(InferenceError):
    """The feature store did not answer; `code` is its status, for metrics."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class RegistryUnavailable(Exception):
    """The registry did not answer a champion lookup (never a caller's error)."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details
