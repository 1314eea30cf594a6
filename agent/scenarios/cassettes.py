"""Record and replay of model traffic: a suite recorded once runs again with no network and no API key.

`CassetteModel` is a pydantic-ai `WrapperModel`, so it goes around any backbone's model (OpenAI,
any OpenAI-compatible server, a plugin's). Each request is normalized, and keyed by a hash of it:

- what varies from run to run without changing what the model is asked is removed: timestamps,
  run and conversation ids, provider response ids, part ids, usage, and in every text (instructions,
  messages, tool results) ISO dates and times, weekday names, UUIDs, scenario tenant ids and
  long-term memory's fact ids; tool call ids are renumbered in order of appearance;
- what the model is asked is kept: the backbone's model string, the messages, the instructions,
  the tool definitions (name, description, JSON schema), the output mode and the model settings.

`--record DIR` calls the real model and writes `DIR/<key>.json` (the backbone it was recorded with,
the normalized request, the response, and the latency). `--replay DIR` serves those files and never
calls the model, not even to connect: the wrapped model is replaced by one that cannot reach the
network. A request with no cassette fails loudly with `ReplayMissError`, naming the request and the
closest recorded one, so a stale suite says what changed.

Replayed turns report the latency recorded with their cassettes (plus the little time the replay
took), so latency comparisons between matrix cells stay meaningful in CI.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import AsyncGenerator, Generator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import TypeAdapter, ValidationError
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ModelResponse
from pydantic_ai.models import CompletedStreamedResponse, Model, ModelRequestParameters, StreamedResponse
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import RunContext, ToolDefinition

from tandem.agent.backbones.base import Backbone
from tandem.agent.core.config import BackboneConfig
from tandem.agent.core.errors import BackboneError, TandemError
from tandem.agent.core.events import short
from tandem.agent.core.files import write_atomically

__all__ = [
    'CASSETTE_FORMAT',
    'CassetteModel',
    'Cassettes',
    'ModelTime',
    'OfflineModel',
    'ReplayMissError',
    'model_time',
    'normalize_request',
    'request_key',
]

CASSETTE_FORMAT = 'tandem.cassette/1'
"""The `format` field of every cassette file."""

Mode = Literal['record', 'replay']
Role = Literal['backbone', 'judge']

_RESPONSE: TypeAdapter[ModelResponse] = TypeAdapter(ModelResponse)

_MESSAGE_NOISE = frozenset(
    {
        'timestamp',
        'run_id',
        'conversation_id',
        'provider_response_id',
        'provider_details',
        'provider_url',
        'provider_name',
        'usage',
        'metadata',
        'model_name',
        'model_id',
        'canonical_system',
        'finish_reason',
        'history_digest',
        'workspace_ref',
        'failed_attempts',
        'state',
    }
)
"""Message fields that differ between runs of the same conversation."""
_PART_NOISE = frozenset({'timestamp', 'id', 'provider_details', 'provider_name', 'metadata'})
"""Part fields that differ between runs (tool call ids are renumbered instead)."""

_TEXT_NOISE = re.compile(
    r'(?P<datetime>\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)'
    r'|(?P<date>\b\d{4}-\d{2}-\d{2}\b)'
    r'|(?P<weekday>\b(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day\b)'
    r'|(?P<uuid>\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b)'
    r'|(?P<tenant>\bscn-[0-9a-f]{16}\b)'  # a scenario run's tenant id
    r'|(?P<fact>\bf-[0-9a-f]{12}\b)'  # long-term memory's fact ids, random per run
    r'|(?P<zwj>\u200d)'  # zero-width joiners some models' adapters put inside special tokens
)
"""What varies between runs inside texts; each match becomes `<name>` (a zero-width joiner goes)."""


class ReplayMissError(TandemError):
    """A replayed request has no cassette: the suite or the code changed since it was recorded."""


# --- normalization -----------------------------------------------------------------------------------


def _placeholder(match: re.Match[str]) -> str:
    kind = match.lastgroup or ''
    return '' if kind == 'zwj' else f'<{kind}>'


@lru_cache(maxsize=1024)
def _text(value: str) -> str:
    # Cached: the same instructions and history come back in every request of a conversation.
    return _TEXT_NOISE.sub(_placeholder, value)


def _scrub(value: Any) -> Any:
    """Every string inside `value`, with volatile text replaced."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in cast(dict[str, Any], value).items()}
    if isinstance(value, list):
        return [_scrub(item) for item in cast(list[Any], value)]
    return value


def _tool(definition: ToolDefinition) -> dict[str, Any]:
    return {
        'name': definition.name,
        'description': _text(definition.description or ''),
        'parameters': definition.parameters_json_schema,
        'kind': definition.kind,
        'strict': definition.strict,
    }


def normalize_request(
    model: str,
    messages: list[ModelMessage],
    model_settings: ModelSettings | None,
    parameters: ModelRequestParameters,
) -> dict[str, Any]:
    """The request as a cassette keys it: what the model is asked, without what varies between runs.

    Args:
        model: The backbone's model string, e.g. `openai-chat:qwen2.5`.
        messages: The messages sent, as the model receives them.
        model_settings: The settings sent (temperature, max tokens, ...).
        parameters: The tools, output mode and output tools.
    """
    dumped = cast(list[dict[str, Any]], ModelMessagesTypeAdapter.dump_python(messages, mode='json'))
    call_ids: dict[str, str] = {}
    normalized: list[dict[str, Any]] = []
    for message in dumped:
        kept = {key: value for key, value in message.items() if key not in _MESSAGE_NOISE}
        parts: list[dict[str, Any]] = []
        for part in cast(list[dict[str, Any]], kept.get('parts', [])):
            clean = {key: value for key, value in part.items() if key not in _PART_NOISE}
            call_id = clean.get('tool_call_id')
            if isinstance(call_id, str):
                clean['tool_call_id'] = call_ids.setdefault(call_id, f'call-{len(call_ids) + 1}')
            parts.append(clean)
        kept['parts'] = parts
        normalized.append(_scrub(kept))
    settings = json.loads(json.dumps(dict(model_settings or {}), sort_keys=True, default=str))
    return {
        'model': model,
        'messages': normalized,
        'tools': [_tool(tool) for tool in parameters.function_tools],
        'output_tools': [_tool(tool) for tool in parameters.output_tools],
        'output_mode': parameters.output_mode,
        'allow_text_output': parameters.allow_text_output,
        'settings': settings,
    }


def request_key(request: dict[str, Any]) -> str:
    """The cassette key of a normalized request: a hash of its canonical JSON."""
    canonical = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(',', ':'))
    return hashlib.sha256(canonical.encode('utf-8')).hexdigest()[:32]


def _summary(request: dict[str, Any]) -> str:
    """What a request asks, in a few words: its last message."""
    messages = cast(list[dict[str, Any]], request.get('messages') or [])
    count = f'{len(messages)} message{"s" if len(messages) != 1 else ""}'
    if not messages:
        return count
    parts = cast(list[dict[str, Any]], messages[-1].get('parts') or [])
    if not parts:
        return count
    part = parts[-1]
    kind = str(part.get('part_kind', '?'))
    if kind == 'user-prompt':
        what = f'user: {short(part.get("content"), 70)!r}'
    elif kind == 'tool-return':
        what = f'result of {part.get("tool_name")}: {short(part.get("content"), 50)!r}'
    else:
        what = f'{kind}: {short(part.get("content") or part.get("args"), 50)!r}'
    return f'{count}, last {what}'


def _first_difference(here: object, recorded: object, path: str = '') -> tuple[str, str, str] | None:
    """Where two normalized requests first differ, and a short rendering of each side there."""
    if isinstance(here, dict) and isinstance(recorded, dict):
        mine, theirs = cast(dict[str, Any], here), cast(dict[str, Any], recorded)
        for key in sorted({*mine, *theirs}, key=lambda k: (k not in ('messages', 'tools'), k)):
            found = _first_difference(mine.get(key), theirs.get(key), f'{path}.{key}' if path else key)
            if found is not None:
                return found
        return None
    if isinstance(here, list) and isinstance(recorded, list):
        mine_list, theirs_list = cast(list[Any], here), cast(list[Any], recorded)
        for index in range(max(len(mine_list), len(theirs_list))):
            if index >= len(mine_list) or index >= len(theirs_list):
                return f'{path}[{index}]', f'{len(mine_list)} items', f'{len(theirs_list)} items'
            found = _first_difference(mine_list[index], theirs_list[index], f'{path}[{index}]')
            if found is not None:
                return found
        return None
    return None if here == recorded else (path, short(here, 60), short(recorded, 60))


def _shared_prefix(here: dict[str, Any], recorded: dict[str, Any]) -> tuple[int, int]:
    mine = cast(list[Any], here.get('messages') or [])
    theirs = cast(list[Any], recorded.get('messages') or [])
    same = 0
    for a, b in zip(mine, theirs, strict=False):
        if a != b:
            break
        same += 1
    return same, -abs(len(mine) - len(theirs))


# --- measuring model time --------------------------------------------------------------------------------


@dataclass
class ModelTime:
    """Model time spent inside a `model_time()` block, for latency reports."""

    replayed: int = 0
    """Responses served from cassettes."""
    recorded_seconds: float = 0.0
    """The latency those responses had when they were recorded."""


_model_time: ContextVar[ModelTime | None] = ContextVar('_model_time', default=None)


@contextmanager
def model_time() -> Generator[ModelTime]:
    """Collect what cassettes served inside the block (tasks it starts included)."""
    meter = ModelTime()
    token = _model_time.set(meter)
    try:
        yield meter
    finally:
        _model_time.reset(token)


def _served(latency: float) -> None:
    meter = _model_time.get()
    if meter is not None:
        meter.replayed += 1
        meter.recorded_seconds += latency


# --- the models ------------------------------------------------------------------------------------------


class OfflineModel(Model):
    """Stands in for a backbone's model during replay: it has its name, and never reaches the network."""

    def __init__(self, spec: str) -> None:
        super().__init__()
        prefix, _, name = spec.partition(':')
        self._spec = spec
        self._system = prefix if name else 'offline'
        self._name = name or spec

    @property
    def model_name(self) -> str:
        """The model name part of the spec."""
        return self._name

    @property
    def system(self) -> str:
        """The provider part of the spec."""
        return self._system

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """Always fails: replay serves cassettes, and never calls the backbone."""
        raise BackboneError(f'{self._spec} is offline: in replay mode only recorded cassettes are served.')


class CassetteModel(WrapperModel):
    """A model that records each request and response as a cassette, or replays them without the network.

    Args:
        wrapped: The backbone's model (an `OfflineModel` when replaying).
        cassettes: The directory and mode.
        backbone: Whose requests these are: its name and config are stored with each cassette.
        role: `backbone` for the assistant under test, `judge` for an LLM judge.
    """

    def __init__(self, wrapped: Model, cassettes: Cassettes, *, backbone: Backbone, role: Role = 'backbone') -> None:
        super().__init__(wrapped)
        self.cassettes = cassettes
        self.backbone_name = backbone.name
        self.backbone_config = backbone.config
        self.role: Role = role

    def _request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        parameters: ModelRequestParameters,
    ) -> tuple[str, dict[str, Any]]:
        request = normalize_request(self.backbone_config.model, messages, model_settings, parameters)
        return request_key(request), request

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """Serve the cassette (replay), or ask the wrapped model and store its answer (record)."""
        key, request = self._request(messages, model_settings, model_request_parameters)
        if self.cassettes.mode == 'replay':
            return self.cassettes.load(key, request)
        started = time.perf_counter()
        response = await self.wrapped.request(messages, model_settings, model_request_parameters)
        self.cassettes.save(key, request, response, time.perf_counter() - started, self)
        return response

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncGenerator[StreamedResponse]:
        """The streamed form: a replayed response streams as one chunk per part."""
        key, request = self._request(messages, model_settings, model_request_parameters)
        if self.cassettes.mode == 'replay':
            response = self.cassettes.load(key, request)
            yield CompletedStreamedResponse(
                response, model_request_parameters=model_request_parameters, replay_events=True
            )
            return
        started = time.perf_counter()
        async with self.wrapped.request_stream(
            messages, model_settings, model_request_parameters, run_context
        ) as stream:
            yield stream
        self.cassettes.save(key, request, stream.get(), time.perf_counter() - started, self)


@dataclass(frozen=True)
class RecordedBackbone:
    """A backbone as a cassette directory remembers it."""

    name: str
    config: BackboneConfig
    role: Role


class Cassettes:
    """A directory of cassettes, recorded or replayed.

    Args:
        directory: Where the cassette files are (created when recording).
        mode: `record` to call the real models and store what they answer; `replay` to serve it.

    Raises:
        TandemError: Replaying from a directory that holds no cassettes.
    """

    def __init__(self, directory: Path, mode: Mode) -> None:
        self.directory = directory
        self.mode: Mode = mode
        if mode == 'record':
            directory.mkdir(parents=True, exist_ok=True)
        elif not directory.is_dir() or not any(directory.glob('*.json')):
            raise TandemError(f'no cassettes in {directory}: record them first with `tandem run --record {directory}`.')
        self.hits = 0
        self.misses = 0
        self.written = 0

    def wrap(self, backbone: Backbone, *, role: Role = 'backbone') -> Backbone:
        """The backbone, its model recording into or replaying from this directory.

        When replaying, the backbone's own model is never used: it is replaced by an `OfflineModel`.
        """
        if isinstance(backbone.model, CassetteModel):
            return backbone
        inner = backbone.model if self.mode == 'record' else OfflineModel(backbone.config.model)
        return replace(backbone, model=CassetteModel(inner, self, backbone=backbone, role=role))

    def offline_backbone(self, name: str, config: BackboneConfig, *, role: Role = 'backbone') -> Backbone:
        """A replaying backbone built from its config alone: no model is resolved, no key is needed."""
        return self.wrap(Backbone(name=name, config=config, model=OfflineModel(config.model)), role=role)

    def recorded_backbones(self) -> list[RecordedBackbone]:
        """The backbones the cassettes were recorded with, by name, in name order."""
        found: dict[tuple[str, str], RecordedBackbone] = {}
        for path in sorted(self.directory.glob('*.json')):
            data = self._read(path)
            if data is None:
                continue
            backbone = cast(dict[str, Any], data.get('backbone') or {})
            try:
                config = BackboneConfig.model_validate(backbone.get('config'))
            except ValidationError:
                continue
            role = cast(Role, data.get('role') if data.get('role') in ('backbone', 'judge') else 'backbone')
            name = str(backbone.get('name') or config.model)
            found.setdefault((role, name), RecordedBackbone(name=name, config=config, role=role))
        return sorted(found.values(), key=lambda recorded: (recorded.role, recorded.name))

    def _path(self, key: str) -> Path:
        return self.directory / f'{key}.json'

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            data: Any = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or cast(dict[str, Any], data).get('format') != CASSETTE_FORMAT:
            return None
        return cast(dict[str, Any], data)

    def load(self, key: str, request: dict[str, Any]) -> ModelResponse:
        """The recorded response to `request`.

        Raises:
            ReplayMissError: No cassette has this request; the message names it and the closest one recorded.
        """
        data = self._read(self._path(key))
        if data is None:
            self.misses += 1
            raise ReplayMissError(self._miss_message(key, request))
        try:
            response = _RESPONSE.validate_python(data['response'])
        except (KeyError, ValidationError) as error:
            raise ReplayMissError(
                f'cassette {self._path(key)} is damaged ({type(error).__name__}): re-record with --record.'
            ) from error
        self.hits += 1
        _served(float(data.get('latency_s') or 0.0))
        return replace(response, timestamp=datetime.now(UTC), run_id=None, conversation_id=None)

    def save(
        self, key: str, request: dict[str, Any], response: ModelResponse, latency: float, model: CassetteModel
    ) -> None:
        """Store a cassette atomically: a concurrent reader sees the old file or the new one, never half of one."""
        payload = {
            'format': CASSETTE_FORMAT,
            'key': key,
            'role': model.role,
            'backbone': {'name': model.backbone_name, 'config': model.backbone_config.model_dump(mode='json')},
            'latency_s': round(latency, 4),
            'request': request,
            'response': _RESPONSE.dump_python(response, mode='json'),
        }
        text = json.dumps(payload, indent=1, ensure_ascii=False, default=str) + '\n'
        write_atomically(self._path(key), text)
        self.written += 1

    def _miss_message(self, key: str, request: dict[str, Any]) -> str:
        message = (
            f'replay miss: no cassette {key} in {self.directory} for a request to {request.get("model")} '
            f'({_summary(request)}).'
        )
        closest: tuple[tuple[int, int], str, dict[str, Any]] | None = None
        for path in self.directory.glob('*.json'):
            data = self._read(path)
            recorded = cast(dict[str, Any], data.get('request')) if data is not None else None
            if not isinstance(recorded, dict) or recorded.get('model') != request.get('model'):
                continue
            score = _shared_prefix(request, recorded)
            if closest is None or score > closest[0]:
                closest = (score, path.stem, recorded)
        if closest is not None:
            difference = _first_difference(request, closest[2])
            if difference is not None:
                where, here, there = difference
                message += (
                    f' The closest recorded request ({closest[1]}) differs at {where}: {here} here, {there} recorded.'
                )
        return message + f' Record it again with --record {self.directory}.'
