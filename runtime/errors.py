"""Errors that entry points (CLI, batch jobs, the server) report to users without a traceback."""

from __future__ import annotations


class UsageError(Exception):
    """Bad arguments: reported as ``sdlite: error: ...`` with exit status 2."""
