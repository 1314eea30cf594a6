"""Driving the REPL in tests: prompt-toolkit pipe input, one line each time the REPL waits at its prompt."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from typing import Any

import pytest
from prompt_toolkit import PromptSession
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from tandem.agent.cli.repl import run_repl
from tandem.agent.core.config import Settings
from tandem.agent.turn.request import TurnRequest


async def drive_repl(
    settings: Settings,
    lines: Sequence[str],
    options: TurnRequest | None = None,
    *,
    width: int = 120,
    timeout: float = 60,
) -> str:
    """Type `lines` (then `/exit`), each once the REPL waits at a prompt, and return the screen.

    Typing ahead instead would let keys race the prompts (and an approval question) for the input.
    """
    console_file = io.StringIO()
    console = Console(file=console_file, width=width, force_terminal=False, color_system=None)
    waiting = asyncio.Event()
    prompt_async = PromptSession.prompt_async

    async def prompting(self: PromptSession[str], *args: Any, **kwargs: Any) -> str:
        waiting.set()
        return await prompt_async(self, *args, **kwargs)

    with create_pipe_input() as pipe, pytest.MonkeyPatch.context() as patch:
        patch.setattr(PromptSession, 'prompt_async', prompting)

        async def type_lines() -> None:
            for line in [*lines, '/exit']:
                await waiting.wait()
                waiting.clear()
                pipe.send_text(line + '\r')

        typist = asyncio.ensure_future(type_lines())
        try:
            await asyncio.wait_for(
                run_repl(
                    settings, options or TurnRequest(session='r1'), input=pipe, output=DummyOutput(), console=console
                ),
                timeout,
            )
        finally:
            typist.cancel()
    return console_file.getvalue()
