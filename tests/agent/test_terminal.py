"""`tandem chat` in a real terminal (a pseudo-terminal), typed into as a person would.

pydantic-ai shows a first-run banner (a logo and a Logfire offer) to a terminal when a program from a
source checkout runs an agent, unless `CI` or `PYTEST_VERSION` is set; so the child gets neither.
"""

from __future__ import annotations

import io
import os
import re
import sys
from pathlib import Path

import pexpect
import pytest

from tests.support.fake_openai import FakeOpenAI

TANDEM = str(Path(sys.executable).parent / 'tandem')


@pytest.mark.slow
def test_a_first_chat_in_a_terminal_shows_tandem_and_the_answer_and_no_banner(tmp_path: Path, redis_url: str) -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ('CI', 'PYTEST_VERSION', 'PYTEST_CURRENT_TEST', 'PYDANTIC_AI_NO_BANNER')
        and not name.startswith(('TANDEM_', 'OPENAI_'))
    }
    with FakeOpenAI(models=['tiny']) as server:
        env |= {
            'TANDEM_HOME': str(tmp_path / 'home'),
            'TANDEM_REDIS_URL': redis_url,
            'OPENAI_BASE_URL': server.url,
            'TERM': 'xterm-256color',
            'PROMPT_TOOLKIT_NO_CPR': '1',  # pexpect does not answer cursor-position requests
        }
        child = pexpect.spawn(TANDEM, ['chat'], env=env, cwd=str(tmp_path), encoding='utf-8', timeout=60)
        child.setwinsize(40, 100)
        child.logfile_read = screen = io.StringIO()  # everything the terminal showed
        try:
            child.expect_exact('you ›')
            child.send('Hello there\r')
            child.expect_exact('You said: Hello there')
            child.expect_exact('you ›')
            child.sendcontrol('d')
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)

    shown = re.sub(r'\x1b\[[0-9;?]*[A-Za-z]', '', screen.getvalue())  # colours and cursor moves
    assert child.exitstatus == 0, shown
    assert 'Tandem · openai-chat:tiny' in shown
    for banner in ('Logfire', 'logfire', 'observability', '/___.___\\'):
        assert banner not in shown, shown
