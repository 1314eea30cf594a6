"""PII scrubbing for exported training data: a built-in scrubber and `module:function` hooks.

A scrubber is any callable from text to text. `tandem tune export` applies each one, in order, to
every string that goes into the file: message contents, tool results, and each string value inside
tool-call arguments (which are scrubbed as parsed JSON, so the arguments stay valid JSON).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from tandem.agent.core.errors import TandemError

__all__ = ['BUILTIN_SCRUBBER', 'Scrubber', 'compose', 'load_scrubber', 'scrub_pii']


class Scrubber(Protocol):
    """Replaces personal data in one piece of text; returns the text unchanged when there is none."""

    def __call__(self, text: str, /) -> str:
        """The scrubbed text."""
        ...


BUILTIN_SCRUBBER = 'tandem.agent.tune.scrub:scrub_pii'
"""The `module:function` path of the built-in scrubber, for `--scrub`."""

_EMAIL = re.compile(r'(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])')
_SEP = r'[ .\-/]?'
_PHONE = re.compile(
    r'(?<![\w+])(?:'
    # International: +CC then 6-14 digits, in groups.
    r'\+\d{1,3}' + _SEP + r'(?:\(\d{1,4}\)' + _SEP + r')?\d{1,4}(?:' + _SEP + r'\d{1,4}){1,5}'
    r'|'
    # An area code in parentheses: (555) 123-4567, (030) 1234 5678.
    r'\(\d{2,4}\)' + _SEP + r'\d{3,4}' + _SEP + r'\d{3,4}'
    r'|'
    # North American: 555-123-4567, 555.123.4567, 555 123 4567.
    r'\d{3}[ .\-]\d{3}[ .\-]\d{4}'
    r'|'
    # National numbers with a trunk 0: 030 1234 5678, 06 12 34 56 78, 0171/1234567.
    r'0\d{1,4}[ .\-/]\d{2,8}(?:[ .\-]\d{2,4}){0,3}'
    r')(?![\w])'
)


def _digit_count(text: str) -> int:
    return sum(char.isdigit() for char in text)


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    return '[PHONE]' if 7 <= _digit_count(text) <= 15 else text


def scrub_pii(text: str) -> str:
    """Replace email addresses with `[EMAIL]` and phone numbers with `[PHONE]`.

    Phone numbers are matched in common written forms only (an international `+` prefix, an area
    code in parentheses, North American `555-123-4567`, or a national number starting with a trunk
    `0` and split into groups), with 7-15 digits, so that arithmetic, dates (`2025-03-14`), times
    and plain long numbers are left alone. It is a safety net, not a guarantee: add your own
    scrubber with `--scrub module:function` for names, addresses or ids specific to your data.
    """
    return _PHONE.sub(_phone, _EMAIL.sub('[EMAIL]', text))


def load_scrubber(path: str) -> Scrubber:
    """Import the scrubber `module:function` (a dotted attribute path after the colon is allowed).

    Raises:
        TandemError: The module cannot be imported, or the attribute is missing or not callable.
    """
    module_name, sep, attribute = path.partition(':')
    if not sep or not module_name or not attribute:
        raise TandemError(f'scrubber {path!r} must be written module:function, e.g. {BUILTIN_SCRUBBER}.')
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise TandemError(f'cannot import scrubber module {module_name!r}: {error}. Is it on PYTHONPATH?') from error
    for part in attribute.split('.'):
        if not hasattr(target, part):
            raise TandemError(f'scrubber {path!r}: module {module_name!r} has no attribute {attribute!r}.')
        target = getattr(target, part)
    if not callable(target):
        raise TandemError(f'scrubber {path!r} is not callable: it must be a function from str to str.')
    return cast(Scrubber, target)


def compose(scrubbers: Sequence[Scrubber | Callable[[str], str]]) -> Scrubber:
    """One scrubber applying `scrubbers` in order; it checks each returns a string.

    Raises:
        TandemError: (When called) a scrubber returned something other than a string.
    """
    chain = list(scrubbers)

    def scrub(text: str) -> str:
        for scrubber in chain:
            result: Any = scrubber(text)
            if not isinstance(result, str):
                name = getattr(scrubber, '__qualname__', repr(scrubber))
                raise TandemError(f'scrubber {name} returned {type(result).__name__}, not str: it must return text.')
            text = result
        return text

    return scrub
