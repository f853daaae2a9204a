"""Every error the API answers, mapped in one place (docs/api.md, section 2).

Each is JSON `{"error": CODE, "detail": TEXT}`. Fleet and node errors keep their own clear
messages; validation errors name the field. Bad input is never a 500.
"""

from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servomesh.host.fleet import FleetError, LimitError, StoppedError, UnknownNameError
from servomesh.host.session import (
    NodeIncompatibleError,
    NodeOfflineError,
    NodeRefusedError,
    NodeTimeoutError,
)

MAX_BODY_BYTES: Final = 64 * 1024


class ErrorBody(BaseModel):
    """What every error response holds."""

    error: str = Field(examples=["out_of_limits"])
    detail: str = Field(examples=["elbow: 120 deg is outside its limits, -90 .. 90 deg"])


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


# Exception type -> (status, code), most specific first.
_FLEET_ERRORS: Final[tuple[tuple[type[Exception], int, str], ...]] = (
    (LimitError, 422, "out_of_limits"),
    (UnknownNameError, 404, "not_found"),
    (StoppedError, 409, "stopped"),
    (NodeIncompatibleError, 503, "node_incompatible"),
    (NodeOfflineError, 503, "node_offline"),
    (NodeTimeoutError, 504, "node_timeout"),
    (FleetError, 409, "conflict"),
)
# A node's refusal reasons (catalogue.ERROR_NAMES) that have their own answer.
_REFUSALS: Final = {"stopped": (409, "stopped"), "out_of_limits": (422, "out_of_limits")}

# Shown in the OpenAPI document for the routes that can answer them.
RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (401, "No token, or an unknown one"),
        (403, "The token's role is too low"),
        (404, "No such name"),
        (409, "Stopped, or in conflict with what runs"),
        (413, "Body too large"),
        (422, "Invalid input, out of limits, or refused by a node"),
        (503, "A node is offline or incompatible"),
        (504, "A node did not answer in time"),
    )
}


def error_response(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def classify(error: Exception) -> tuple[int, str]:
    """The status and code for a fleet or node error."""
    if isinstance(error, NodeRefusedError):
        return _REFUSALS.get(error.reason, (422, "refused"))
    for kind, status, code in _FLEET_ERRORS:
        if isinstance(error, kind):
            return status, code
    return 500, "internal"


def _validation_detail(error: RequestValidationError) -> tuple[int, str, str]:
    problems = []
    for item in error.errors():
        if item.get("type") == "json_invalid":
            return 400, "bad_request", "the body is not valid JSON"
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        problems.append("%s: %s" % (where or "body", item.get("msg", "invalid")))
    return 422, "invalid", "; ".join(problems) or "invalid request"


def install(app: FastAPI) -> None:
    """Register the handlers and the body size limit on `app`."""

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.code, error.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(*_validation_detail(error))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        code = codes.get(error.status_code, "bad_request")
        return JSONResponse(
            {"error": code, "detail": str(error.detail)},
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    async def fleet_error(_request: Request, error: Exception) -> JSONResponse:
        return error_response(*classify(error), str(error))

    kinds: list[type[Exception]] = [NodeRefusedError, *(kind for kind, _, _ in _FLEET_ERRORS)]
    for kind in kinds:
        app.add_exception_handler(kind, fleet_error)

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, whether or not they declare their length."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, "the body is over %d bytes" % self.limit)
            return message

        await self.app(scope, limited, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "too_large", "the body is over %d bytes" % self.limit)
        await response(scope, receive, send)
