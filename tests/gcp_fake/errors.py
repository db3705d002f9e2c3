"""Errors in the shape of the Compute API's JSON error responses."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error response in the shape of the Compute API."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.status, "message": self.message,
                          "errors": [{"message": self.message, "domain": "global", "reason": self.reason}]}}


def invalid(field_name: str, value: Any, why: str) -> ApiError:
    return ApiError(400, "invalid", f"Invalid value for field '{field_name}': '{value}'. {why}")


def required(field_name: str) -> ApiError:
    return ApiError(400, "required", f"Required field '{field_name}' not specified")


def not_found(path: str) -> ApiError:
    return ApiError(404, "notFound", f"The resource '{path}' was not found")


def not_ready(path: str) -> ApiError:
    return ApiError(400, "resourceNotReady", f"The resource '{path}' is not ready")


def in_use(disk: str, user: str) -> ApiError:
    return ApiError(400, "resourceInUseByAnotherResource", f"The disk resource '{disk}' is already being used by "
                                                           f"'{user}'")


def already_exists(path: str) -> ApiError:
    return ApiError(409, "alreadyExists", f"The resource '{path}' already exists")
