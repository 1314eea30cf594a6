"""Backbones: a name or model string turned into a pydantic-ai `Model`.

A backbone is chosen by name from the config (`[backbones.NAME]`), or given directly as a model
string with `--model`. Resolvers for model-string prefixes are looked up through the
`tandem.backbones` entry-point group, so a plugin can add `llama-cpp:` or any other prefix the same
way the built-in OpenAI resolver is registered.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Protocol, cast

import httpx
from pydantic_ai.models import Model
from pydantic_ai.settings import ModelSettings

from tandem.agent.core.config import BackboneConfig, Settings
from tandem.agent.core.errors import BackboneError

_LOCAL_SERVERS: tuple[tuple[str, int], ...] = (
    ('Ollama', 11434),
    ('LM Studio', 1234),
    ('llama.cpp', 8080),
    ('vLLM', 8000),
)

# Each line fits an 80-column terminal, so the commands can be copied whole.
NO_MODEL_HELP = """no model is configured. Pick one of:
  1. OpenAI:
       export OPENAI_API_KEY=sk-...
  2. a local server (or start LM Studio, llama.cpp's server or vLLM):
       ollama serve && ollama pull qwen2.5:3b
  3. any OpenAI-compatible server:
       export OPENAI_BASE_URL=http://127.0.0.1:8000/v1
       export TANDEM_BACKBONE=openai-chat:MODEL_NAME
  4. a small model inside Tandem (about 1 GB, runs on the CPU):
       make local && tandem models pull qwen2.5-1.5b-instruct --register local"""


class BackboneResolver(Protocol):
    """Turns a backbone's config into a pydantic-ai model, for the model-string prefixes it claims."""

    @property
    def prefixes(self) -> tuple[str, ...]:
        """The model-string prefixes this resolver handles, such as `openai-chat`."""
        ...

    def resolve(self, config: BackboneConfig) -> Model:
        """Build the model for `config`.

        Raises:
            BackboneError: The config cannot work, with a message saying what to change.
        """
        ...


@dataclass(frozen=True)
class Backbone:
    """A resolved backbone: its name, its config, and the model it runs on."""

    name: str
    config: BackboneConfig
    model: Model = field(compare=False)

    @property
    def model_settings(self) -> ModelSettings:
        """The `settings` table of the config, as pydantic-ai model settings."""
        return ModelSettings(**self.config.settings)  # type: ignore[typeddict-item]

    @property
    def kind(self) -> str:
        """`base` or `fine-tuned`."""
        return self.config.kind


def _api_key(config: BackboneConfig) -> str | None:
    if config.api_key_env:
        key = os.environ.get(config.api_key_env)
        if not key:
            raise BackboneError(f'{config.api_key_env} is not set: export it, or drop api_key_env from the backbone.')
        return key
    return os.environ.get('OPENAI_API_KEY')


class OpenAIResolver:
    """`openai:` (the Responses API), `openai-responses:` and `openai-chat:` (any OpenAI-compatible server)."""

    prefixes: tuple[str, ...] = ('openai', 'openai-chat', 'openai-responses')

    def resolve(self, config: BackboneConfig) -> Model:
        """Build an OpenAI chat-completions or Responses model, honouring `OPENAI_BASE_URL` like the SDK."""
        import openai
        from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
        from pydantic_ai.profiles.openai import OpenAIModelProfile
        from pydantic_ai.providers.openai import OpenAIProvider

        from tandem.agent.backbones.openai_client import RetryLoggingOpenAI

        prefix, _, model_name = config.model.partition(':')
        base_url = config.base_url or os.environ.get('OPENAI_BASE_URL') or None
        api_key = _api_key(config)
        if api_key is None:
            if base_url is None:
                raise BackboneError(
                    f'{config.model} needs OPENAI_API_KEY: export it, or serve a model locally and use '
                    '--model openai-chat:NAME with OPENAI_BASE_URL=http://127.0.0.1:PORT/v1.'
                )
            api_key = 'not-needed'  # local servers ignore it, but the SDK insists on one
        client = RetryLoggingOpenAI(
            base_url=base_url, api_key=api_key, max_retries=config.attempts - 1, timeout=openai.Timeout(120, connect=5)
        )
        provider = OpenAIProvider(openai_client=client)
        if prefix == 'openai-chat':
            # A stream that ends without a finish reason was cut: an error, not an answer (`run._as_tandem_error`).
            unfinished_is_cut = OpenAIModelProfile(openai_chat_streaming_requires_finish_reason=True)
            return OpenAIChatModel(model_name, provider=provider, profile=unfinished_is_cut)
        return OpenAIResponsesModel(model_name, provider=provider)


class _InferResolver:
    """Any other provider pydantic-ai knows, through its own model-string inference."""

    prefixes: tuple[str, ...] = ()

    def resolve(self, config: BackboneConfig) -> Model:
        from pydantic_ai.exceptions import UserError
        from pydantic_ai.models import infer_model

        try:
            return infer_model(config.model)
        except (UserError, ImportError, ValueError) as error:
            raise BackboneError(f'cannot use model {config.model!r}: {error}') from error


@cache
def _resolvers() -> Mapping[str, BackboneResolver]:
    """Resolvers by prefix, from the `tandem.backbones` entry points (the built-in one included)."""
    found: dict[str, BackboneResolver] = {}
    for point in entry_points(group='tandem.backbones'):
        try:
            resolver: BackboneResolver = point.load()()
        except Exception:  # noqa: BLE001 - a broken plugin must not take the built-ins down with it
            continue
        for prefix in resolver.prefixes:
            found.setdefault(prefix, resolver)
    for prefix in OpenAIResolver.prefixes:  # also when Tandem runs from a tree without metadata
        found.setdefault(prefix, OpenAIResolver())
    return found


def build_model(config: BackboneConfig) -> Model:
    """The pydantic-ai model for a backbone config."""
    prefix = config.model.partition(':')[0]
    resolver = _resolvers().get(prefix, _InferResolver())
    return resolver.resolve(config)


def _looks_like_model_string(text: str) -> bool:
    return ':' in text


def backbone_from_config(name: str, config: BackboneConfig) -> Backbone:
    """Resolve one configured backbone."""
    return Backbone(name=name, config=config, model=build_model(config))


@dataclass(frozen=True)
class Unconfigured(Backbone):
    """The stand-in backbone of a REPL opened with no model; `reason` says how to get one."""

    reason: str = ''


def unconfigured(reason: str) -> Unconfigured:
    """A stand-in backbone for a REPL opened with no model. The REPL runs no turn on it; a model
    call that reaches it anyway fails with `reason`."""
    from pydantic_ai.messages import ModelMessage, ModelResponse
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    def refuse(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise BackboneError(reason)

    async def refuse_streaming(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        raise BackboneError(reason)
        yield ''  # pragma: no cover - makes this an async generator

    model = FunctionModel(refuse, stream_function=refuse_streaming, model_name='none')
    return Unconfigured(name='(no model)', config=BackboneConfig(model='none:'), model=model, reason=reason)


def configured(settings: Settings, name: str) -> Backbone:
    """The backbone called `name` in the config, or `name` itself read as a model string.

    Raises:
        BackboneError: Neither; the message lists the configured names.
    """
    config = settings.backbones.get(name)
    if config is not None:
        return backbone_from_config(name, config)
    if _looks_like_model_string(name):
        return backbone_from_config(name, BackboneConfig(model=name))
    known = ', '.join(sorted(settings.backbones)) or 'none configured'
    raise BackboneError(
        f'unknown backbone {name!r} (known: {known}): add [backbones.{name}] to tandem.toml, '
        'or pass --model PROVIDER:MODEL.'
    )


async def resolve(settings: Settings, *, name: str | None = None, model: str | None = None) -> Backbone:
    """Pick the backbone for a command: `--model`, then `--backbone`, then the config, then autodetect.

    Raises:
        BackboneError: Nothing usable was found; the message names the ways to get a model.
    """
    if model is not None:
        return backbone_from_config(model, BackboneConfig(model=model))
    chosen = name or settings.backbone
    if chosen is not None:
        return configured(settings, chosen)
    if settings.backbones:
        first = next(iter(settings.backbones))
        return backbone_from_config(first, settings.backbones[first])
    base_url = os.environ.get('OPENAI_BASE_URL')
    if base_url and not _is_openai(base_url):
        # Only OpenAI itself serves the Responses API: other servers get chat completions and their own model.
        listed = await _listed_models(base_url, timeout=2.0, api_key=os.environ.get('OPENAI_API_KEY'))
        if listed:
            spec = f'openai-chat:{listed[0]}'
            return backbone_from_config(spec, BackboneConfig(model=spec))
        raise BackboneError(
            f'OPENAI_BASE_URL={base_url} lists no models (GET /models): start that server, or name its model '
            'with TANDEM_BACKBONE=openai-chat:MODEL_NAME.'
        )
    if os.environ.get('OPENAI_API_KEY'):
        spec = f'openai:{settings.openai_model}'
        return backbone_from_config(spec, BackboneConfig(model=spec))
    found = await detect_local_server()
    if found is not None:
        server, base_url, model_name = found
        spec = f'openai-chat:{model_name}'
        return backbone_from_config(f'{server}:{model_name}', BackboneConfig(model=spec, base_url=base_url))
    raise BackboneError(NO_MODEL_HELP)


def _is_openai(base_url: str) -> bool:
    """Whether a base URL is OpenAI's own API."""
    host = httpx.URL(base_url).host
    return host == 'api.openai.com' or host.endswith('.openai.azure.com')


async def _listed_models(base_url: str, *, timeout: float, api_key: str | None = None) -> list[str] | None:
    """The ids `GET {base_url}/models` lists, or `None` when the server does not answer."""
    headers = {'Authorization': f'Bearer {api_key}'} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(base_url.rstrip('/') + '/models', headers=headers)
            response.raise_for_status()
            payload: Any = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    listing = cast(dict[str, Any], payload) if isinstance(payload, dict) else {}
    items = cast(list[Any], listing.get('data')) if isinstance(listing.get('data'), list) else []
    return [str(cast(dict[str, Any], item)['id']) for item in items if isinstance(item, dict) and 'id' in item]


async def detect_local_server(host: str = '127.0.0.1', timeout: float = 0.5) -> tuple[str, str, str] | None:
    """The first usual local server that answers with a model: `(server, base_url, model)`."""
    urls = [f'http://{host}:{port}/v1' for _, port in _LOCAL_SERVERS]
    answers = await asyncio.gather(*(_listed_models(url, timeout=timeout) for url in urls))
    for (server, _), url, listed in zip(_LOCAL_SERVERS, urls, answers, strict=True):
        if listed:
            return server, url, listed[0]
    return None


@dataclass(frozen=True)
class ProbeResult:
    """What `tandem backbones` found out about one backbone."""

    name: str
    model: str
    kind: str
    reachable: bool | None
    listed: bool | None
    tool_calls: bool | None
    detail: str


async def probe(name: str, config: BackboneConfig, *, timeout: float = 5.0) -> ProbeResult:
    """Check a backbone: server reachable, model listed by `/v1/models`, tool calls well-formed."""
    base_url = config.base_url or os.environ.get('OPENAI_BASE_URL')
    prefix, _, model_name = config.model.partition(':')
    if not prefix.startswith('openai'):
        return ProbeResult(name, config.model, config.kind, None, None, None, 'not an OpenAI-compatible backbone')
    base_url = base_url or 'https://api.openai.com/v1'
    try:
        api_key = _api_key(config)
    except BackboneError as error:
        return ProbeResult(name, config.model, config.kind, None, None, None, str(error))
    listed = await _listed_models(base_url, timeout=timeout, api_key=api_key)
    if listed is None:
        return ProbeResult(name, config.model, config.kind, False, None, None, f'no answer from {base_url}')
    is_listed = model_name in listed
    tool_ok, detail = await _probe_tool_call(base_url, model_name, api_key, timeout=timeout)
    return ProbeResult(name, config.model, config.kind, True, is_listed, tool_ok, detail)


async def _probe_tool_call(base_url: str, model: str, api_key: str | None, *, timeout: float) -> tuple[bool, str]:
    """Ask for one forced tool call and check it comes back with parseable JSON arguments."""
    import json

    body = {
        'model': model,
        'messages': [{'role': 'user', 'content': 'What is 2+3? Use the add tool.'}],
        'tools': [
            {
                'type': 'function',
                'function': {
                    'name': 'add',
                    'description': 'Add two integers.',
                    'parameters': {
                        'type': 'object',
                        'properties': {'a': {'type': 'integer'}, 'b': {'type': 'integer'}},
                        'required': ['a', 'b'],
                    },
                },
            }
        ],
        'tool_choice': 'required',
        'max_tokens': 64,
    }
    headers = {'Authorization': f'Bearer {api_key}'} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(base_url.rstrip('/') + '/chat/completions', json=body, headers=headers)
        if response.status_code >= 400:
            return False, f'chat completion failed: HTTP {response.status_code}'
        payload: Any = response.json()
        calls: list[Any] = payload['choices'][0]['message'].get('tool_calls') or []
        if not calls:
            return False, 'answered without a tool call'
        json.loads(calls[0]['function']['arguments'])
    except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as error:
        return False, f'tool call malformed or failed: {type(error).__name__}'
    return True, 'ok'
