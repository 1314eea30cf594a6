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
    """The backbone's answer did not finish: its stream was cut, or it stopped at its output limit or content filter.

    Args:
        backbone: The backbone's name, for the message.
        finish_reason: The reason the model gave, or `None` when it gave none (the answer broke off).
    """

    def __init__(self, backbone: str, finish_reason: str | None) -> None:
        self.finish_reason = finish_reason
        if finish_reason is None:
            why = f'backbone {backbone!r} stopped mid-answer: its response ended without a finish reason, as when the connection is cut'
            then = 'Try again.'
        elif finish_reason == 'length':
            why = f"backbone {backbone!r} hit its output limit mid-answer (finish_reason 'length')"
            then = (
                f'Raise max_tokens under [backbones.{backbone}.settings] in tandem.toml, or ask for a shorter answer.'
            )
        elif finish_reason == 'content_filter':
            why = f"the content filter of backbone {backbone!r} stopped the answer (finish_reason 'content_filter')"
            then = ''
        else:
            why = f'backbone {backbone!r} reported an error mid-answer (finish_reason {finish_reason!r})'
            then = 'Try again.'
        super().__init__(f'{why}; the turn was not saved. {then}'.rstrip())


class InvalidOutputError(BackboneError):
    """The backbone gave no answer that validates against the type or schema asked for, in all its tries."""


class PromptError(TandemError):
    """A prompt template is missing, malformed, or needs a variable that was not given."""
