"""Errors in FastAPI's 422 shape (``detail[].loc`` naming the body field), whatever raised them:
pydantic, a rule of ``sdlite.rules`` checked with the model's facts, or a body that is not JSON.

What an error echoes of the input is made JSON-safe and cut short, so that no bad value (a lone
surrogate, NaN, a 1 MB prompt) turns a 422 into a 500 or into a response as large as the request.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from .. import rules
from ..rules import RuleError


def json_safe(value: Any) -> Any:
    """An error's echoed input without what JSON in UTF-8 cannot carry (a 500 otherwise): NaN/inf
    floats become their repr, lone surrogates a \\udXXX escape."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def clipped(value: Any) -> Any:
    """An echoed input cut short: a 1 MB prompt or a body of 10,000 items is refused in a few KB."""
    n = rules.MAX_ECHO_CHARS
    if isinstance(value, str) and len(value) > n:
        return f"{value[:n]}... ({len(value)} characters)"
    if isinstance(value, dict):
        return {k: clipped(v) for k, v in list(value.items())[:20]}
    if isinstance(value, (list, tuple)):
        return [clipped(v) for v in value[:20]]
    return value


def error_detail(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: clipped(v) if k in ("input", "ctx") else v for k, v in err.items()}
        for err in json_safe(jsonable_encoder(errors))
    ]


def add_error_handlers(app: FastAPI) -> None:
    """422 in FastAPI's shape for the rules checked here (``jobs.py``) as for pydantic's."""

    async def rule_broken(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, RuleError)
        detail = [{"type": "value_error", "loc": ["body", err.field], "msg": str(err), "input": err.value}]
        return JSONResponse({"detail": error_detail(detail)}, status_code=422)

    async def invalid_body(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, RequestValidationError)
        return JSONResponse({"detail": error_detail(list(err.errors()))}, status_code=422)

    async def http_error(request: Request, err: Exception) -> Response:
        assert isinstance(err, HTTPException)
        # FastAPI's 400 for a body its JSON parser fails on other than by syntax: not UTF-8, nested
        # past the recursion limit, an integer of more than 4300 digits.  A 422, as for bad syntax.
        cause = err.__cause__
        if err.status_code == 400 and isinstance(cause, (ValueError, RecursionError)):
            msg = f"the body is not readable JSON: {type(cause).__name__}: {cause}"[: rules.MAX_ECHO_CHARS]
            detail = [{"type": "json_invalid", "loc": ["body"], "msg": msg}]
            return JSONResponse({"detail": detail}, status_code=422)
        return await http_exception_handler(request, err)

    app.add_exception_handler(RuleError, rule_broken)
    app.add_exception_handler(RequestValidationError, invalid_body)
    app.add_exception_handler(HTTPException, http_error)
