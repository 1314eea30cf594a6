"""Delimiting untrusted content (web pages, search results, documents) before a model reads it.

Text that came from outside the conversation may contain instructions aimed at the model ("ignore
your previous instructions and ..."). Tools that return such text wrap it with `wrap_untrusted`:

```text
<untrusted source="web_fetch" url="https://example.com/">
...the page text...
</untrusted>
```

The prompt tells the model that everything between the tags is data, never instructions, and the
turn is marked tainted so the approval policy can gate side-effecting tools. The wrapper is only
useful if the content cannot close it early, so every spelling of an `untrusted` tag inside the
text is defused.
"""

from __future__ import annotations

import html
import re

__all__ = ['UNTRUSTED_TAG', 'wrap_untrusted']

UNTRUSTED_TAG = 'untrusted'
"""The name of the delimiter element."""

_NAME_PATTERN = re.compile(r'[a-z][a-z0-9_]{0,31}')
_MAX_ATTR_CHARS = 500
# Invisible characters a model reads straight through: soft hyphen, zero-width space/joiners,
# directional marks, word joiner and BOM. Allowing them between the letters stops
# `</un\u200btrusted>` from slipping past as a closing tag.
_INVISIBLE = '[\u00ad\u200b-\u200f\u2060\ufeff]*'
# Any opening or closing delimiter tag: `<untrusted`, `</untrusted`, `< / UNTRUSTED`, also with the
# full-width and small less-than signs, which models read as `<` too.
_TAG_PATTERN = re.compile(
    '[<\uff1c\ufe64]' + r'\s*/?\s*' + _INVISIBLE + _INVISIBLE.join(UNTRUSTED_TAG),
    re.IGNORECASE,
)
_CONTROL_CHARS = re.compile(r'[\x00-\x1f\x7f]+')


def wrap_untrusted(source: str, text: str, **attrs: str | int | None) -> str:
    """Wrap `text` in an `<untrusted source=...>` element that the text itself cannot close.

    Args:
        source: What produced the text, e.g. `'web_fetch'`, `'web_search'` or `'retrieval'`:
            a lowercase identifier.
        text: The untrusted content. Any `untrusted` tag inside it (opening or closing, any
            case or spacing) has its `<` replaced by `&lt;`; nothing else is changed.
        **attrs: Extra attributes such as `url=` or `query=`. `None` values are left out; values
            are HTML-escaped, flattened to one line and cut to 500 characters.

    Returns:
        The delimited text: opening tag, newline, text, newline, closing tag.

    Raises:
        ValueError: `source` or an attribute name isn't a lowercase identifier (a programming error).
    """
    rendered = [f'source="{_attr_value(_checked_name(source))}"']
    for name, value in attrs.items():
        if value is not None:
            rendered.append(f'{_checked_name(name)}="{_attr_value(str(value))}"')
    body = _TAG_PATTERN.sub(lambda match: '&lt;' + match.group(0)[1:], text)
    return f'<{UNTRUSTED_TAG} {" ".join(rendered)}>\n{body}\n</{UNTRUSTED_TAG}>'


def _checked_name(name: str) -> str:
    if not _NAME_PATTERN.fullmatch(name):
        raise ValueError(f'invalid untrusted-content label {name!r}: use a lowercase identifier')
    return name


def _attr_value(value: str) -> str:
    flat = _CONTROL_CHARS.sub(' ', value).strip()
    if len(flat) > _MAX_ATTR_CHARS:
        flat = flat[: _MAX_ATTR_CHARS - 1] + '…'
    return html.escape(flat, quote=True)
