"""The built-in PII scrubber and `module:function` hooks."""

from __future__ import annotations

import pytest

from tandem.agent.core.errors import TandemError
from tandem.agent.tune.scrub import BUILTIN_SCRUBBER, compose, load_scrubber, scrub_pii


@pytest.mark.parametrize(
    ('text', 'scrubbed'),
    [
        ('write to ann.lee+work@mail.example.co.uk now', 'write to [EMAIL] now'),
        ('call +44 20 7946 0958 or +1-202-555-0143', 'call [PHONE] or [PHONE]'),
        ('(555) 123-4567 and 555.123.4567', '[PHONE] and [PHONE]'),
        ('Büro: 030 1234 5678, mobil 0171/1234567', 'Büro: [PHONE], mobil [PHONE]'),
        ('06 12 34 56 78', '[PHONE]'),
    ],
)
def test_emails_and_phone_numbers_are_replaced(text: str, scrubbed: str) -> None:
    assert scrub_pii(text) == scrubbed


@pytest.mark.parametrize(
    'text',
    [
        'what is 2**100 / 3?',
        'on 2025-03-14 at 09:26:53',
        '(17 * 23) / 4 = 97.75',
        'order 12345678 shipped',
        '1 000 000 people',
        'version 3.11.7',
        'user@localhost is not an address',
    ],
)
def test_arithmetic_dates_and_plain_numbers_are_left_alone(text: str) -> None:
    assert scrub_pii(text) == text


def test_hooks_load_by_module_and_function() -> None:
    assert load_scrubber(BUILTIN_SCRUBBER) is scrub_pii
    assert load_scrubber('tandem.agent.tune.scrub:compose') is compose
    with pytest.raises(TandemError, match='must be written module:function'):
        load_scrubber('tandem.agent.tune.scrub')
    with pytest.raises(TandemError, match="has no attribute 'nope'"):
        load_scrubber('tandem.agent.tune.scrub:nope')
    with pytest.raises(TandemError, match='is not callable'):
        load_scrubber('tandem.agent.tune.scrub:BUILTIN_SCRUBBER')


def test_composed_scrubbers_run_in_order_and_must_return_text() -> None:
    scrub = compose([scrub_pii, lambda text: text.replace('[EMAIL]', '<mail>')])
    assert scrub('a@b.io') == '<mail>'
    broken = compose([lambda text: None])  # type: ignore[list-item,return-value]
    with pytest.raises(TandemError, match='returned NoneType, not str'):
        broken('x')
