"""Errors whose message is meant for the user.

Front ends print a `TandemError` as one line and exit non-zero; anything else is a bug and
shows a traceback only with `--debug`.
"""

from __future__ import annotations


class TandemError(Exception):
    """An error whose message is one actionable line for the user; the CLI prints it without a traceback."""


class InvalidIdError(TandemError, ValueError):
    """A tenant, user or session id that Tandem refuses before touching Redis."""


class RedisUnavailableError(TandemError):
    """Redis could not be reached, or went away mid-operation."""


class ConfigError(TandemError):
    """The configuration is invalid or names something that does not exist."""


class BackboneError(TandemError):
    """A backbone is unknown, unreachable, or refused the request."""


class IncompleteAnswerError(BackboneError):
    """The backbone's answer did not finish: its stream was cut, or it stopped at its output limit or content filter."""

    def __init__(self, message: str, *, finish_reason: str | None) -> None:
        super().__init__(message)
        self.finish_reason = finish_reason


class PromptError(TandemError):
    """A prompt template is missing, malformed, or needs a variable that was not given."""
