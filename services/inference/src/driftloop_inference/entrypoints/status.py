"""The one mapping from the data plane's errors to gRPC status codes.

Every servicer method is wrapped in `grpc_errors`: a domain error ends the call
with its status code and its message as the details, word for word. Anything
else is a bug and reaches the client as UNKNOWN, as gRPC does by itself.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio

from driftloop_inference.errors import (
    DeadlineExpired,
    FeaturesUnavailable,
    InferenceError,
    InvalidInput,
    MissingFeatures,
    ModelNotFound,
    ModelUnavailable,
    Overloaded,
    UnsupportedModel,
)

Context = grpc.aio.ServicerContext[Any, Any]
Servicer = TypeVar("Servicer")
Request = TypeVar("Request")
Response = TypeVar("Response")

STATUS_CODES: dict[type[InferenceError], grpc.StatusCode] = {
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    ModelUnavailable: grpc.StatusCode.UNAVAILABLE,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    UnsupportedModel: grpc.StatusCode.FAILED_PRECONDITION,
    MissingFeatures: grpc.StatusCode.FAILED_PRECONDITION,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    FeaturesUnavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_code(error: InferenceError) -> grpc.StatusCode:
    """The code of the nearest mapped class in the error's hierarchy."""
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def grpc_errors(
    method: Callable[[Servicer, Request, Context], Awaitable[Response]],
) -> Callable[[Servicer, Request, Context], Awaitable[Response]]:
    """Wrap a servicer method: domain errors become `context.abort(code, message)`."""

    @functools.wraps(method)
    async def wrapper(self: Servicer, request: Request, context: Context) -> Response:
        try:
            return await method(self, request, context)
        except InferenceError as error:
            await context.abort(status_code(error), str(error))

    return wrapper
