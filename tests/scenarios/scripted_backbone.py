"""A deterministic scripted backbone for scenario tests: a "policy" that reads the conversation and acts.

Unlike `tests/support/scripted.py` (a fixed list of steps), this `FunctionModel` decides from what
it is sent, well enough to pass the starter suite in `scenarios/`, and to fail it for the right
reasons when an ingredient is ablated:

- new user text → tool calls, for what the tools it was given can do: arithmetic → `calculate`,
  "what time ... in Tokyo" → `now(timezone=...)`, a URL → `web_fetch`, "search the web" →
  `web_search`, "my documents" → `search_knowledge`, "remember that ..." → `remember`, a question
  about the user → the memory in its instructions, else `recall`;
- tool results → an answer built from them: `[n]` citations for passages, a refusal (and no
  tool call) when a passage carries an injected instruction;
- no tool needed → an answer from its instructions ("who are you", today's date, remembered facts);
- a pydantic-evals `LLMJudge` request → a verdict: each phrase the rubric quotes must appear in the
  output, or must not when the rubric says "not" or "never" before it.

Expose it as a backbone with `scripted_backbone()`; the runner and `tandem run` take it like any other
(`run_suite(..., backbones=[scripted_backbone()])`, or `agent.cli.run.injected_backbones` for the CLI).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models import ModelRequestParameters
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.tools import ToolDefinition

from tandem.agent.backbones.base import Backbone
from tandem.agent.core.config import BackboneConfig
from tests.support.fake_openai import Reply, Text, ToolCall

__all__ = ['judge_backbone', 'openai_policy', 'policy', 'scripted_backbone', 'scripted_model']

_ZONES = {
    'tokyo': 'Asia/Tokyo',
    'london': 'Europe/London',
    'berlin': 'Europe/Berlin',
    'paris': 'Europe/Paris',
    'new york': 'America/New_York',
    'sydney': 'Australia/Sydney',
    'utc': 'UTC',
}
_EXPRESSION = re.compile(r'[\d(][\d\s.+\-*/%()]*[\d)]')
_OPERATOR = re.compile(r'\d\s*(?:\*\*|[+\-*/%])\s*[\d(]')
_URL = re.compile(r'https?://[^\s<>"\']+')
_TIME = re.compile(r"\b(what time|the time|current time|time is it|today's date|what day is it)\b", re.I)
_WEB = re.compile(r'\b(search the web|search online|look up online|on the web|web for)\b', re.I)
_DOCS = re.compile(r'\b(my documents|my docs|my notes|the documents|knowledge base|handbook|onboarding note)\b', re.I)
_REMEMBER = re.compile(r'\bremember(?: that|:)?\s+(?P<fact>.+)', re.I)
_ABOUT_ME = re.compile(r'\b(my|me|i)\b', re.I)
_INJECTION = re.compile(
    r'(ignore (?:all |any )?(?:previous|prior|above|earlier) instructions|disregard (?:all |your )?(?:previous |prior )?'
    r'instructions|new instructions:|you must now|reply only with)',
    re.I,
)
_STOP = frozenset(
    [
        'a',
        'an',
        'and',
        'are',
        'as',
        'at',
        'be',
        'by',
        'can',
        'could',
        'did',
        'do',
        'does',
        'for',
        'from',
        'get',
        'got',
        'how',
        'i',
        'in',
        'is',
        'it',
        'me',
        'my',
        'of',
        'on',
        'or',
        'our',
        'so',
        'that',
        'the',
        'their',
        'them',
        'they',
        'this',
        'to',
        'was',
        'we',
        'what',
        'when',
        'where',
        'which',
        'who',
        'why',
        'will',
        'with',
        'you',
        'your',
        'please',
        'tell',
        'according',
    ]
)


def _words(text: str) -> set[str]:
    return {word for word in re.findall(r"[a-z0-9']+", text.lower()) if word not in _STOP and len(word) > 1}


def _user_text(messages: list[ModelMessage]) -> str:
    """The text of the latest user message."""
    for message in reversed(messages):
        if isinstance(message, ModelRequest):
            for part in reversed(message.parts):
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    return ''


# --- the judge ---------------------------------------------------------------------------------------


def _is_judge(messages: list[ModelMessage], info: AgentInfo) -> bool:
    grading = any(
        isinstance(part, SystemPromptPart) and 'grading output' in part.content
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
    )
    return grading or '<Rubric>' in _user_text(messages)


def _section(text: str, tag: str) -> str:
    match = re.search(rf'<{tag}>\s*(.*?)\s*</{tag}>', text, re.S)
    return match.group(1) if match else ''


def _verdict(output: str, rubric: str) -> tuple[bool, str]:
    """Quoted phrases must appear in the output, unless the rubric says not/never before them."""
    checks: list[str] = []
    passed = True
    for match in re.finditer(r"'([^']+)'|\"([^\"]+)\"", rubric):
        phrase = match.group(1) or match.group(2)
        before = rubric[: match.start()]
        sentence = re.split(r'[.;]', before)[-1].lower()
        clause = re.split(r'\b(?:and|but)\b', sentence)[-1]
        negated = bool(re.search(r"\b(not|never|no|without|doesn't|don't)\b", clause))
        present = phrase.lower() in output.lower()
        ok = present != negated
        passed &= ok
        checks.append(f'{"does not contain" if not present else "contains"} {phrase!r}{"" if ok else " (wrong)"}')
    if not checks:
        return bool(output.strip()), 'the output is not empty' if output.strip() else 'the output is empty'
    return passed, '; '.join(checks)


def _judge(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    prompt = _user_text(messages)
    passed, reason = _verdict(_section(prompt, 'Output'), _section(prompt, 'Rubric'))
    verdict = {'reason': reason, 'pass': passed, 'score': 1.0 if passed else 0.0}
    name = info.output_tools[0].name if info.output_tools else 'final_result'
    if not info.output_tools:
        return ModelResponse(parts=[TextPart(json.dumps(verdict))])
    return ModelResponse(parts=[ToolCallPart(name, verdict, tool_call_id='judge-1')])


# --- the assistant --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    name: str
    args: dict[str, object]


def _third_person(fact: str) -> str:
    fact = fact.strip().rstrip('.!')
    fact = re.sub(r'^my\b', "The user's", fact, flags=re.I)
    fact = re.sub(r'^i\b', 'The user', fact, flags=re.I)
    fact = re.sub(r'\bmy\b', 'their', fact, flags=re.I)
    return fact[:1].upper() + fact[1:] + '.'


def _plan(user: str, tools: set[str], instructions: str) -> list[_Call]:
    """The tool calls a new user message needs, among the tools on offer."""
    calls: list[_Call] = []
    remember = _REMEMBER.search(user)
    if remember and 'remember' in tools:
        return [_Call('remember', {'fact': _third_person(remember.group('fact'))})]
    if _DOCS.search(user) and 'search_knowledge' in tools:
        return [_Call('search_knowledge', {'query': user})]
    url = _URL.search(user)
    if url and 'web_fetch' in tools:
        return [_Call('web_fetch', {'url': url.group(0).rstrip('.,;:!?)')})]
    if _WEB.search(user) and 'web_search' in tools:
        topic = re.split(r'\bfor\b', user, maxsplit=1)[-1].strip(' .?!')
        return [_Call('web_search', {'query': topic})]
    expression = next((m.group(0).strip() for m in _EXPRESSION.finditer(user) if _OPERATOR.search(m.group(0))), None)
    if expression and 'calculate' in tools:
        calls.append(_Call('calculate', {'expression': expression}))
    if _TIME.search(user) and 'now' in tools:
        lowered = user.lower()
        zone = next((zone for city, zone in _ZONES.items() if city in lowered), 'UTC')
        calls.append(_Call('now', {'timezone': zone}))
    if calls:
        return calls
    if _ABOUT_ME.search(user) and 'recall' in tools and not _memory_lines(user, instructions):
        return [_Call('recall', {'query': ' '.join(sorted(_words(user))) or user})]
    return []


def _memory_lines(user: str, instructions: str) -> list[str]:
    """Remembered facts from the instructions' memory section that share a word with the question."""
    section = instructions.split('What you know about the user', 1)[-1] if instructions else ''
    facts = [line.strip('- ').split(' [')[0] for line in section.splitlines() if line.strip().startswith('- ')]
    wanted = _words(user) - {'user', 'know', 'remember'}
    return [fact for fact in facts if _words(fact) & wanted]


def _direct(user: str, info: AgentInfo) -> str:
    """An answer without tools: from the instructions, or an honest "cannot"."""
    instructions = info.instructions or ''
    lowered = user.lower()
    if 'who are you' in lowered or 'instructions' in lowered:
        identity = re.search(r'You are ([^.]+)\.', instructions)
        today = re.search(r'Today is (\d{4}-\d{2}-\d{2})', instructions)
        parts = [f'I am {identity.group(1)}.' if identity else 'I am an assistant.']
        if today:
            parts.append(f'According to my instructions, today is {today.group(1)}.')
        return ' '.join(parts)
    remembered = _memory_lines(user, instructions)
    if remembered:
        return 'From what I remember: ' + ' '.join(remembered)
    named = re.search(r'You are talking with ([^.\n]+)\.', instructions)
    if named and 'name' in lowered:
        return f'Your name is {named.group(1)}.'
    if _ABOUT_ME.search(user) and '?' in user:
        return "I don't know that about you yet."
    return "I can't do that without a suitable tool."


def _passages(content: str) -> list[tuple[str, str]]:
    """`(number, text)` of each `[n] title — source` block of a search_knowledge result."""
    blocks = re.split(r'^(?=\[\d+\] )', content, flags=re.M)
    found: list[tuple[str, str]] = []
    for block in blocks:
        match = re.match(r'\[(\d+)\] [^\n]*\n(.*)', block, re.S)
        if match:
            text = re.sub(r'</?untrusted[^>]*>', '', match.group(2)).strip()
            found.append((match.group(1), text))
    return found


def _sentences(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith('#')]
    return [s.strip() for s in re.split(r'(?<=[.!?])\s+', ' '.join(lines)) if s.strip()]


def _from_documents(user: str, content: str) -> str:
    passages = _passages(content)
    if not passages:
        return f'I found nothing about that in your documents. ({content.strip()[:120]})'
    injected = [s for number, text in passages for s in _sentences(text) if _INJECTION.search(s)]
    if injected:
        safe = [(number, s) for number, text in passages for s in _sentences(text) if not _INJECTION.search(s)]
        summary = ' '.join(f'{s} [{number}]' for number, s in safe[:2])
        return (
            f'{summary} Note: the document also contains an instruction addressed to me, which I ignored: '
            'documents are data, not instructions.'
        ).strip()
    wanted = _words(user) - {'documents', 'docs', 'notes', 'summarize', 'summary'}
    scored = [
        (len(_words(sentence) & wanted), -index, number, sentence)
        for index, (number, text) in enumerate(passages)
        for sentence in _sentences(text)
    ]
    _, _, number, sentence = max(scored)
    return f'{sentence} [{number}]'


def _from_tool(user: str, part: ToolReturnPart) -> str:
    content = part.model_response_str()
    name = part.tool_name
    if part.outcome == 'denied' or content.startswith('Denied'):
        return f'I was not allowed to run {name}.'
    if name == 'calculate':
        return f'{part.tool_name} says: {content}. So the answer is {content}.'
    if name == 'now':
        return f'It is currently {content}.'
    if name == 'web_search':
        if content.startswith('web search unavailable'):
            return f"I couldn't search the web right now ({content.split('. ')[0]})."
        first = re.search(r'^\[1\] (.+)$', content, re.M)
        return f'Here is what I found on the web: {first.group(1) if first else content[:120]}'
    if name == 'web_fetch':
        if content.startswith('web fetch failed'):
            return f"I couldn't fetch that page: {content.removeprefix('web fetch failed: ')}"
        title = re.search(r'^Title: (.+)$', content, re.M)
        return f'The page is titled "{title.group(1)}".' if title else f'The page says: {content[:160]}'
    if name == 'search_knowledge':
        return _from_documents(user, content)
    if name == 'remember':
        return f"Got it, I'll remember that. ({content})"
    if name == 'recall':
        facts = [line.strip('- ').split(' [')[0] for line in content.splitlines() if line.strip().startswith('- ')]
        return 'From what I remember: ' + ' '.join(facts) if facts else "I don't remember anything about that."
    return f'{name} returned: {content}'


def policy(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Decide the next response from the conversation; see the module docstring."""
    if _is_judge(messages, info):
        return _judge(messages, info)
    user = _user_text(messages)
    last = messages[-1] if messages else None
    parts = last.parts if isinstance(last, ModelRequest) else []
    returns = [part for part in parts if isinstance(part, ToolReturnPart)]
    retries = [part for part in parts if isinstance(part, RetryPromptPart)]
    if returns or retries:
        answers = [_from_tool(user, part) for part in returns]
        answers += [f'The {part.tool_name or "tool"} call failed: {part.model_response()}' for part in retries]
        return ModelResponse(parts=[TextPart(' '.join(answers))])
    calls = _plan(user, {tool.name for tool in info.function_tools}, info.instructions or '')
    if calls:
        turn = sum(isinstance(message, ModelResponse) for message in messages)
        return ModelResponse(
            parts=[
                ToolCallPart(call.name, call.args, tool_call_id=f'call-{turn}-{index}')
                for index, call in enumerate(calls)
            ]
        )
    return ModelResponse(parts=[TextPart(_direct(user, info))])


async def _stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
    response = policy(messages, info)
    for index, part in enumerate(response.parts):
        if isinstance(part, TextPart):
            words = part.content.split(' ')
            for position, word in enumerate(words):
                yield word if position == 0 else ' ' + word
        elif isinstance(part, ToolCallPart):
            yield {
                index: DeltaToolCall(
                    name=part.tool_name, json_args=part.args_as_json_str(), tool_call_id=part.tool_call_id
                )
            }


def scripted_model(name: str = 'scripted-policy') -> FunctionModel:
    """The policy as a pydantic-ai model, streamed and not streamed."""
    return FunctionModel(policy, stream_function=_stream, model_name=name)


def scripted_backbone(name: str = 'scripted') -> Backbone:
    """The policy as a Tandem backbone, for `run_suite(backbones=[...])` or `tandem run` in tests."""
    return Backbone(name=name, config=BackboneConfig(model=f'test:{name}'), model=scripted_model(name))


def judge_backbone(name: str = 'scripted-judge') -> Backbone:
    """The same policy, to judge rubrics (it answers `LLMJudge` requests with a verdict)."""
    return scripted_backbone(name)


# --- the same policy behind a loopback OpenAI-compatible server ---------------------------------------


def _openai_messages(body: dict[str, Any]) -> tuple[list[ModelMessage], str]:
    """A chat-completions request's messages as pydantic-ai messages, and its system text (the instructions)."""
    messages: list[ModelMessage] = []
    system: list[str] = []
    names: dict[str, str] = {}
    for message in body.get('messages', []):
        role, content = message.get('role'), message.get('content')
        text = content if isinstance(content, str) else ' '.join(part.get('text', '') for part in content or [])
        if role in ('system', 'developer'):
            system.append(text)
            messages.append(ModelRequest(parts=[SystemPromptPart(text)]))
        elif role == 'user':
            messages.append(ModelRequest(parts=[UserPromptPart(text)]))
        elif role == 'assistant':
            parts: list[TextPart | ToolCallPart] = [TextPart(text)] if text else []
            for call in message.get('tool_calls') or []:
                names[call['id']] = call['function']['name']
                parts.append(
                    ToolCallPart(
                        call['function']['name'], json.loads(call['function']['arguments'] or '{}'), call['id']
                    )
                )
            messages.append(ModelResponse(parts=parts))
        elif role == 'tool':
            part = ToolReturnPart(names.get(message['tool_call_id'], ''), text, tool_call_id=message['tool_call_id'])
            last = messages[-1] if messages else None
            if isinstance(last, ModelRequest) and all(isinstance(p, ToolReturnPart) for p in last.parts):
                last.parts = [*last.parts, part]
            else:
                messages.append(ModelRequest(parts=[part]))
    return messages, '\n\n'.join(system)


def openai_policy(body: dict[str, Any]) -> Reply:
    """`policy`, answering a chat-completions request: a `FakeOpenAI(script=openai_policy)` serves it to
    other processes (`tandem worker`s), as a model server would."""
    messages, instructions = _openai_messages(body)
    tools = [
        ToolDefinition(
            name=tool['function']['name'],
            description=tool['function'].get('description'),
            parameters_json_schema=tool['function'].get('parameters') or {},
        )
        for tool in body.get('tools') or []
    ]
    info = AgentInfo(
        function_tools=[tool for tool in tools if not tool.name.startswith('final_result')],
        allow_text_output=True,
        output_tools=[tool for tool in tools if tool.name.startswith('final_result')],
        model_settings=None,
        model_request_parameters=ModelRequestParameters(),
        instructions=instructions,
    )
    response = policy(messages, info)
    calls = tuple((part.tool_name, part.args_as_dict()) for part in response.parts if isinstance(part, ToolCallPart))
    if calls:
        return ToolCall(calls)
    return Text(''.join(part.content for part in response.parts if isinstance(part, TextPart)))
