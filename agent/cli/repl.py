"""`tandem chat`: the interactive REPL. It renders runtime events; the turn itself is `run_turn`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.formatted_text import HTML
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import Output
from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from tandem.agent.backbones import base as backbones
from tandem.agent.cli.memory import MemoryCommands
from tandem.agent.cli.transcript import render_transcript
from tandem.agent.core.config import Settings
from tandem.agent.core.errors import BackboneError, TandemError
from tandem.agent.core.events import TextDelta, ToolCallFinished, ToolCallStarted, TurnEvent
from tandem.agent.core.prompts import PromptLibrary
from tandem.agent.core.turn_state import Citation, ShownExample
from tandem.agent.turn.approvals import ApprovalRequest
from tandem.agent.turn.build import build_deps, open_redis
from tandem.agent.turn.deps import Deps
from tandem.agent.turn.request import TurnRequest, new_session_id
from tandem.agent.turn.run import TurnUsage, run_turn, summarize_args, with_session
from tandem.agent.turn.tool_status import tool_statuses

HELP = """\
/help              this help
/new               start a new session
/sessions          list your sessions
/switch ID         continue session ID (asks before starting a new one)
/backbone NAME     switch backbone, keeping the history
/prompt NAME@V     switch prompt template
/tools             tools and their status
/usage             tokens and cost so far
/history           this session's transcript
/sources           the sources the last answer cited
/examples          the few-shot examples the last turn was shown
/markdown          the last answer as raw markdown
/cp                copy the last answer to the clipboard (through the terminal)
/memory            what is remembered about you
/memory forget N   forget fact N of /memory (or all, after asking)
/run FILE          run one scenario, showing each step (for debugging it)
/exit              leave (or Ctrl-D)
Enter sends; Alt-Enter (Esc then Enter) adds a line. Ctrl-C cancels the running turn."""


class _TurnView:
    """Renders one turn's events: tool calls as lines, the answer as live markdown."""

    def __init__(self, console: Console):
        self._console = console
        self._text = ''
        self._live: Live | None = None
        # Until the first event, so a slow first token does not look like a hang.
        self._thinking: Status | None = Status('thinking…', console=console, spinner='dots')
        self._thinking.start()

    def __call__(self, event: TurnEvent) -> None:
        self._stop_thinking()
        if isinstance(event, TextDelta):
            self._text += event.text
            if self._live is None:
                self._live = Live(console=self._console, refresh_per_second=12, vertical_overflow='visible')
                self._live.start()
            self._live.update(Markdown(self._text))
        elif isinstance(event, ToolCallStarted):
            self._stop_live()
            self._console.print(
                f'[cyan]⚙ {escape(event.name)}[/]([dim]{escape(summarize_args(event.args))}[/]) …', highlight=False
            )
        elif isinstance(event, ToolCallFinished):
            mark = '[green]✓[/]' if event.ok else '[red]✗[/]'
            self._console.print(f'  {mark} {escape(event.name)} {event.duration_s * 1000:.0f} ms', highlight=False)

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            self._text = ''

    def _stop_thinking(self) -> None:
        if self._thinking is not None:
            self._thinking.stop()
            self._thinking = None

    def close(self) -> None:
        """Stop the live display, leaving the answer on screen."""
        self._stop_thinking()
        self._stop_live()


class Repl:
    """One REPL: a prompt-toolkit session in front of `run_turn`."""

    def __init__(
        self,
        deps: Deps,
        settings: Settings,
        *,
        console: Console,
        prompt_session: PromptSession[str],
    ):
        self.settings = settings
        self.console = console
        self.prompt_session = prompt_session
        self.usage = TurnUsage()
        """What this REPL's turns spent, across sessions (`/usage`)."""
        self.session_tokens = 0
        """The tokens the current session has spent, earlier runs included (the status bar)."""
        self._view: _TurnView | None = None
        self._confirm: PromptSession[str] = PromptSession(input=prompt_session.input, output=prompt_session.output)
        self.deps = replace(deps, approver=self.approve)
        self._memory_commands = MemoryCommands(console, confirm=self.ask)
        self._last_citations: dict[int, Citation] = {}
        self._last_examples: list[ShownExample] = []
        self._last_answer = ''
        self._commands: dict[str, Callable[[str], Awaitable[bool]]] = {
            '/help': self._help,
            '/new': self._new,
            '/sessions': self._sessions,
            '/switch': self._switch,
            '/backbone': self._backbone,
            '/prompt': self._prompt,
            '/tools': self._tools,
            '/usage': self._usage,
            '/history': self._history,
            '/sources': self._sources,
            '/examples': self._examples,
            '/markdown': self._markdown,
            '/cp': self._copy,
            '/memory': self._memory,
            '/run': self._run_scenario,
            '/exit': self._exit,
            '/quit': self._exit,
        }

    def status_line(self) -> HTML:
        """The bottom toolbar: backbone, prompt version and session."""
        deps = self.deps
        return HTML(
            f' <b>{_escape(deps.backbone.name)}</b> · {_escape(deps.prompt.ref)} · session {_escape(deps.identity.session)}'
            f' · {self.session_tokens} tokens'
        )

    async def run(self) -> None:
        """Read, run, print, until /exit or Ctrl-D."""
        await self._load_session_tokens()
        self.console.print(
            f'[bold]Tandem[/] · {escape(self.deps.backbone.name)} · {escape(self.deps.prompt.ref)} · /help for commands'
        )
        while True:
            try:
                # A background error (a stale HTTP connection closing, say) must not take over the prompt.
                line = await self.prompt_session.prompt_async(
                    'you › ', bottom_toolbar=self.status_line, set_exception_handler=False
                )
            except KeyboardInterrupt:
                continue
            except EOFError:
                return
            text = line.strip()
            if not text:
                continue
            try:
                if text.startswith('/'):
                    if not await self._command(text):
                        return
                else:
                    await self._turn(text)
            except TandemError as error:
                self.console.print(f'[bold red]error:[/] {escape(str(error))}', highlight=False)

    async def _command(self, text: str) -> bool:
        name, _, argument = text.partition(' ')
        handler = self._commands.get(name)
        if handler is None:
            self.console.print(f'unknown command {name}: /help lists them', highlight=False, markup=False)
            return True
        return await handler(argument.strip())

    async def ask(self, question: str) -> bool:
        """Ask a yes/no question at the prompt; only y or yes is a yes."""
        answer = await self._confirm.prompt_async(f'{question} [y/N] ', set_exception_handler=False)
        return answer.strip().lower() in {'y', 'yes'}

    async def approve(self, request: ApprovalRequest) -> bool:
        """Show a held tool call and ask whether it may run."""
        if self._view is not None:
            self._view.close()
        self.console.print(
            '[yellow]Untrusted content entered this turn; the model wants to run a tool with side effects:[/]'
        )
        self.console.print(f'  {request.describe()}', highlight=False, markup=False)
        approved = await self.ask('Allow it?')
        self.console.print('allowed' if approved else 'denied; the model is told so')
        return approved

    def _refuse_without_model(self) -> bool:
        """On the stand-in backbone of a REPL opened with no model, say how to get one, and run nothing."""
        backbone = self.deps.backbone
        if not isinstance(backbone, backbones.Unconfigured):
            return False
        self.console.print(backbone.reason, style='yellow', highlight=False, markup=False)
        self.console.print(
            'Nothing was sent. Get a model as above, then `/backbone NAME` or `/backbone PROVIDER:MODEL`.'
        )
        return True

    async def _turn(self, text: str) -> None:
        if self._refuse_without_model():
            return
        view = self._view = _TurnView(self.console)
        task = asyncio.ensure_future(run_turn(self.deps, text, on_event=view))
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers off the main thread
            loop.add_signal_handler(signal.SIGINT, task.cancel)
        try:
            result = await task
        except asyncio.CancelledError:
            view.close()
            if not task.cancelled():
                raise
            self.console.print('[yellow]turn cancelled; nothing from it was saved[/]')
            return
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
            view.close()
            self._view = None
        self.usage = self.usage + result.usage
        self.session_tokens += result.usage.total_tokens
        self._last_citations, self._last_answer = result.citations, result.answer
        self._last_examples = result.examples

    async def _load_session_tokens(self) -> None:
        record = await self.deps.conversations.read_record(self.deps.identity.session)
        self.session_tokens = record.usage.total_tokens if record is not None else 0

    async def _help(self, _: str) -> bool:
        self.console.print(HELP, highlight=False, markup=False)
        return True

    async def _new(self, _: str) -> bool:
        self.deps = with_session(self.deps, new_session_id())
        self.session_tokens = 0
        self.console.print(f'new session {self.deps.identity.session}', markup=False)
        return True

    async def _sessions(self, _: str) -> bool:
        infos = await self.deps.conversations.list_sessions(user=self.deps.identity.user, limit=20)
        table = Table('session', 'title', 'messages', 'updated')
        for info in infos:
            current = ' ←' if info.id == self.deps.identity.session else ''
            updated = f'{info.updated_at:%Y-%m-%d %H:%M}'
            table.add_row(info.id + current, info.title or '', str(info.message_count), updated)
        self.console.print(table, markup=False)
        return True

    async def _switch(self, argument: str) -> bool:
        from tandem.memory.keys import validate_id

        if not argument:
            raise TandemError('usage: /switch SESSION_ID (see /sessions)')
        session = validate_id('session', argument)
        record = await self.deps.conversations.read_record(session)
        if record is None and not await self.ask(f'There is no session {session}: start a new one by that name?'):
            self.console.print(f'still in session {self.deps.identity.session}', markup=False)
            return True
        self.deps = with_session(self.deps, session)
        self.session_tokens = record.usage.total_tokens if record is not None else 0
        count = await self.deps.conversations.message_count(session)
        self.console.print(f'switched to session {session} ({count} messages)', markup=False)
        return True

    async def _backbone(self, argument: str) -> bool:
        if not argument:
            names = ', '.join(sorted(self.settings.backbones)) or 'none configured'
            self.console.print(f'current: {self.deps.backbone.name}; configured: {names}', markup=False)
            return True
        backbone = backbones.configured(self.settings, argument)
        self.deps = replace(self.deps, backbone=backbone)
        self.console.print(f'backbone is now {backbone.name}; the history is kept', markup=False)
        return True

    async def _prompt(self, argument: str) -> bool:
        library = PromptLibrary.default(self.settings.prompts_dir)
        if not argument:
            self.console.print(
                f'current: {self.deps.prompt.ref}; available: {", ".join(library.names())}', markup=False
            )
            return True
        self.deps = replace(self.deps, prompt=library.get(argument))
        self.console.print(f'prompt is now {self.deps.prompt.ref}', markup=False)
        return True

    async def _tools(self, _: str) -> bool:
        table = Table('toolset', 'tool', 'status', 'description')
        selected = {plugin.name for plugin in self.deps.toolsets}
        for row in await tool_statuses(self.settings):
            status = row.status if row.toolset in selected else 'off'
            table.add_row(row.toolset, row.tool, status, row.description)
        self.console.print(table, markup=False)
        return True

    async def _usage(self, _: str) -> bool:
        usage = self.usage
        cost = f'${usage.cost_usd:.4f}' if usage.cost_usd is not None else 'unknown (no price for this backbone)'
        self.console.print(
            f'{usage.requests} requests · {usage.input_tokens} in + {usage.output_tokens} out = '
            f'{usage.total_tokens} tokens · {usage.tool_calls} tool calls · cost {cost}',
            highlight=False,
        )
        return True

    async def _history(self, _: str) -> bool:
        conversation = await self.deps.conversations.load(self.deps.identity.session, scope=self.deps.identity.user)
        messages = conversation.messages if conversation is not None else []
        if not messages:
            self.console.print('(no messages yet)')
        for line in render_transcript(messages):
            self.console.print(line, highlight=False, markup=False)
        return True

    async def _sources(self, _: str) -> bool:
        from tandem.agent.turn.providers.knowledge import sources_table

        headline, table = sources_table(self._last_citations, self._last_answer)
        self.console.print(headline, highlight=False, markup=False)
        if table is not None:
            self.console.print(table)  # its cells are escaped where they are made
        return True

    async def _examples(self, _: str) -> bool:
        from rich.table import Table

        settings = self.deps.settings.examples
        if not self._last_examples:
            why = (
                'examples are off (set examples.mode to fixed or retrieved)'
                if settings.mode == 'off'
                else f'none of example set {settings.set!r} was chosen (`tandem examples list` shows the set)'
            )
            self.console.print(f'The last turn was shown no examples: {why}.', highlight=False, markup=False)
            return True
        total = sum(example.tokens for example in self._last_examples)
        table = Table('id', 'tokens', 'tool calls', 'question', title=f'{settings.mode} examples, {total} tokens')
        for example in self._last_examples:
            table.add_row(example.id, str(example.tokens), str(example.tool_calls), escape(example.question))
        self.console.print(table)
        return True

    async def _markdown(self, _: str) -> bool:
        if not self._last_answer:
            raise TandemError('no answer yet in this REPL: /markdown shows the last one as raw markdown.')
        self.console.print(self._last_answer, highlight=False, markup=False, soft_wrap=True)
        return True

    async def _copy(self, _: str) -> bool:
        if not self._last_answer:
            raise TandemError('no answer yet in this REPL: /cp copies the last one.')
        # OSC 52 asks the terminal itself to set the clipboard: it works over SSH and needs no clipboard tool.
        payload = base64.b64encode(self._last_answer.encode()).decode()
        self.console.file.write(f'\x1b]52;c;{payload}\x07')
        self.console.file.flush()
        self.console.print(
            f'copied the last answer ({len(self._last_answer)} characters) through the terminal; '
            'if your terminal does not allow it (OSC 52), /markdown shows it to select',
            markup=False,
        )
        return True

    async def _memory(self, argument: str) -> bool:
        await self._memory_commands.run(self.deps, argument)
        return True

    async def _run_scenario(self, argument: str) -> bool:
        from tandem.agent.scenarios.console import run_file

        if not argument:
            raise TandemError('usage: /run FILE, a scenario file such as scenarios/calculator.yaml')
        if self._refuse_without_model():
            return True
        task = asyncio.ensure_future(run_file(argument, self.deps, self.settings, self.console))
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers off the main thread
            loop.add_signal_handler(signal.SIGINT, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            self.console.print('[yellow]scenario cancelled; its namespace was deleted[/]')
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
        return True

    async def _exit(self, _: str) -> bool:
        return False


def _escape(text: str) -> str:
    return text.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')


def _key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add('escape', 'enter')
    def _newline(event: KeyPressEvent) -> None:  # pyright: ignore[reportUnusedFunction]
        event.current_buffer.insert_text('\n')

    return bindings


def make_prompt_session(
    settings: Settings, *, input: Input | None = None, output: Output | None = None
) -> PromptSession[str]:
    """A prompt-toolkit session with a history file in `TANDEM_HOME` (in memory for piped input)."""
    history: Any = InMemoryHistory() if input is not None else FileHistory(str(settings.home / 'repl_history'))
    return PromptSession(history=history, key_bindings=_key_bindings(), input=input, output=output, multiline=False)


async def run_repl(
    settings: Settings,
    request: TurnRequest,
    *,
    input: Input | None = None,
    output: Output | None = None,
    console: Console | None = None,
) -> None:
    """Open Redis, build `Deps`, and run the REPL until the user leaves."""
    settings.home.mkdir(parents=True, exist_ok=True)
    async with open_redis(settings) as redis:
        console = console or Console()
        session = request.session or new_session_id()
        try:
            deps = await build_deps(settings, redis, request, session=session)
        except BackboneError as error:
            # Open anyway: the person can pick a backbone with /backbone once they have one.
            console.print(str(error), style='yellow', highlight=False, markup=False)
            console.print('The REPL is open; `/backbone NAME` or `/backbone PROVIDER:MODEL` picks a model.')
            deps = await build_deps(
                settings, redis, request, session=session, backbone=backbones.unconfigured(str(error))
            )
        repl = Repl(
            deps,
            settings,
            console=console,
            prompt_session=make_prompt_session(settings, input=input, output=output),
        )
        await repl.run()
