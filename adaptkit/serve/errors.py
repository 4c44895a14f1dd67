"""Every error the server returns, in OpenAI's body (``{"error": {message, type, param,
code}}``), so the ``openai`` client raises its own typed exception for it."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adaptkit.errors import (
    AdaptkitError,
    InputError,
    UnknownUserError,
    UnknownVersionError,
)
from adaptkit.feedback import FeedbackError
from adaptkit.serve.naming import UnknownModelError
from adaptkit.serve.scheduler import QueueFullError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class ApiError(Exception):
    """An error with its HTTP status, raised by the handlers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def as_api_error(error: Exception) -> ApiError:
    """The HTTP status of an adaptkit error (a 500 only for what is not the caller's)."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, QueueFullError):
        return ApiError(
            429, str(error), code="queue_full", headers={"Retry-After": str(error.retry_after)}
        )
    if isinstance(error, (UnknownUserError, UnknownVersionError, UnknownModelError)):
        return ApiError(404, str(error), code="model_not_found", param="model")
    if isinstance(error, FeedbackError):
        return ApiError(422, str(error), code="invalid_feedback")
    if isinstance(error, InputError):
        return ApiError(400, str(error), code="invalid_request")
    if isinstance(error, AdaptkitError):
        return ApiError(500, str(error), code="server_error")
    return ApiError(500, f"internal error ({type(error).__name__}); see the server log")


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        where = next(e for e in errors if e.get("type") == "json_invalid")
        return error_response(
            400,
            f"the body is not valid JSON ({where.get('ctx', {}).get('error', 'parse error')}); "
            "send a JSON object",
            code="invalid_json",
        )
    problems = [f"{_location(e['loc'])}: {e['msg']}" for e in errors]
    return error_response(
        422,
        "; ".join(problems),
        code="invalid_value",
        param=_location(errors[0]["loc"]) if errors else None,
    )


async def _api(_request: Request, exc: ApiError) -> JSONResponse:
    return error_response(
        exc.status, exc.message, code=exc.code, param=exc.param, headers=exc.headers
    )


async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


async def _adaptkit(_request: Request, exc: AdaptkitError) -> JSONResponse:
    return await _api(_request, as_api_error(exc))


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    return await _api(_request, as_api_error(exc))


def install(app: Any) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ApiError, _api)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(AdaptkitError, _adaptkit)
    app.add_exception_handler(Exception, _unexpected)
