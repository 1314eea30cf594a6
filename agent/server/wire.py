"""OpenAI's wire format: request bodies, errors as OpenAI shapes them, and Tandem's history and results in OpenAI's shapes."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

from fastapi.responses import JSONResponse
from openai import BaseModel as OpenAIObject
from openai.types import Model as OpenAIModel
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.completion_usage import CompletionUsage
from pydantic import BaseModel, ConfigDict, Field
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelRequestPart,
    ModelResponse,
    ModelResponsePart,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)

from tandem.agent.api import SessionExistsError
from tandem.agent.core.errors import (
    BackboneError,
    ConfigError,
    IncompleteAnswerError,
    InvalidIdError,
    InvalidOutputError,
    PromptError,
    RedisUnavailableError,
    TandemError,
)
from tandem.agent.server.auth import Refusal
from tandem.agent.turn.output import OutputSchemaError, UnsupportedOutputError, as_sent, schema_type
from tandem.agent.turn.run import TurnResult, TurnUsage
from tandem.memory.conversations import SessionInfo, SessionNotFoundError

if TYPE_CHECKING:
    from tandem.memory.knowledge.store import KbInfo


SESSION_HEADER = 'X-Tandem-Session'


USER_HEADER = 'X-Tandem-User'


class APIError(Refusal):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = 'invalid_request_error',
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, type=type, code=code, headers=headers)
        self.param = param

    @classmethod
    def refusing(cls, refusal: Refusal) -> APIError:
        """Auth's `refusal`, in OpenAI's shape."""
        if isinstance(refusal, APIError):
            return refusal
        return cls(refusal.status, refusal.message, type=refusal.type, code=refusal.code, headers=refusal.headers)

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {'error': {'message': self.message, 'type': self.type, 'param': self.param, 'code': self.code}}

    def response(self) -> JSONResponse:
        """The error as an HTTP response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def api_error_from(error: TandemError) -> APIError:
    """The HTTP status and OpenAI error type for a user-facing Tandem failure."""
    message = str(error)
    if isinstance(error, InvalidIdError):
        return APIError(400, message, code='invalid_id')
    if isinstance(error, SessionNotFoundError):
        return APIError(404, message, code='session_not_found')
    if isinstance(error, SessionExistsError):
        return APIError(409, message, code='session_exists')
    if isinstance(error, RedisUnavailableError):
        return APIError(503, message, type='service_unavailable', code='redis_unavailable')
    if isinstance(error, UnsupportedOutputError):
        return APIError(400, message, param='response_format', code='response_format_unsupported')
    if isinstance(error, InvalidOutputError):
        return APIError(502, message, type='api_error', code='invalid_output')
    if isinstance(error, IncompleteAnswerError):
        return APIError(502, message, type='api_error', code='backbone_incomplete')
    if isinstance(error, BackboneError):
        return APIError(502, message, type='api_error', code='backbone_error')
    if isinstance(error, ConfigError | PromptError):
        return APIError(500, message, type='server_error', code='server_misconfigured')
    return APIError(500, message, type='server_error', code='turn_failed')


INTERNAL_ERROR = APIError(
    500, 'internal error: the server log has the details.', type='server_error', code='internal_error'
)


class _ToolCallFunction(BaseModel):
    name: str
    arguments: str = '{}'


class _ToolCallIn(BaseModel):
    id: str
    type: Literal['function'] = 'function'
    function: _ToolCallFunction


class ChatMessage(BaseModel):
    """One message of a chat-completion request, as OpenAI defines it (text content only)."""

    model_config = ConfigDict(extra='allow')

    role: Literal['system', 'developer', 'user', 'assistant', 'tool']
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[_ToolCallIn] | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    """`stream_options`: `include_usage` adds a last chunk with the usage."""

    model_config = ConfigDict(extra='allow')

    include_usage: bool = False


class TandemOptions(BaseModel):
    """A chat-completion request's `tandem` field: options OpenAI's API doesn't have."""

    model_config = ConfigDict(extra='forbid')

    progress: bool = Field(
        default=False,
        description='Stream a chunk with no choices and a `tandem` field when each tool call starts and ends.',
    )


class JsonSchemaFormat(BaseModel):
    """`response_format.json_schema`: the schema the answer must validate against, and its name."""

    model_config = ConfigDict(extra='allow', populate_by_name=True)

    name: str = Field(min_length=1)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias='schema')
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`response_format`: prose (`text`), any JSON object (`json_object`), or JSON that validates (`json_schema`)."""

    model_config = ConfigDict(extra='allow')

    type: Literal['text', 'json_object', 'json_schema']
    json_schema: JsonSchemaFormat | None = None


def requested_output(response_format: ResponseFormat | None) -> tuple[Any, bool | None]:
    """The output type `response_format` asks for, and whether strictly; `(None, None)` for prose.

    Raises:
        APIError: The schema is missing or invalid (400, naming the parameter).
    """
    if response_format is None or response_format.type == 'text':
        return None, None
    if response_format.type == 'json_object':
        return schema_type({'type': 'object'}, name='json_object'), None
    spec = response_format.json_schema
    param = 'response_format.json_schema.schema'
    if spec is None or spec.schema_ is None:
        raise APIError(400, 'response_format: json_schema needs a "schema": a JSON Schema of an object.', param=param)
    try:
        return schema_type(spec.schema_, name=spec.name, description=spec.description), spec.strict
    except OutputSchemaError as error:
        raise APIError(400, f'response_format: {error}', param=param) from None


class ChatCompletionRequest(BaseModel):
    """A chat-completion request. Sampling parameters are accepted and ignored: the backbone's config sets them."""

    model_config = ConfigDict(extra='allow')

    model: str = Field(description='A backbone name, as `GET /v1/models` lists them.')
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(
        default=None,
        min_length=1,
        description=f'Names the user, and the session when no `{SESSION_HEADER}` header is sent.',
    )
    n: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: ResponseFormat | None = Field(
        default=None, description='`json_object` or `json_schema` for an answer in JSON that validates.'
    )
    tandem: TandemOptions | None = Field(default=None, description="Tandem's own options (an extension).")


class SessionCreate(BaseModel):
    """`POST /v1/sessions`."""

    id: str | None = Field(default=None, min_length=1, description='The session id; a fresh one when omitted.')
    user: str | None = Field(
        default=None, min_length=1, description="Who the session belongs to; the settings' user when omitted."
    )


def message_text(content: str | list[dict[str, Any]] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ''
    texts: list[str] = []
    for index, part in enumerate(content):
        kind = part.get('type')
        if kind != 'text' or not isinstance(part.get('text'), str):
            raise APIError(
                400,
                f'{where}.content[{index}]: content of type {kind!r} is not supported; send text.',
                param=f'{where}.content',
                code='unsupported_content',
            )
        texts.append(cast(str, part['text']))
    return '\n'.join(texts)


def openai_to_history(messages: Sequence[ChatMessage]) -> list[ModelMessage]:
    """The pydantic-ai history for OpenAI-format messages (the new user turn excluded).

    System and developer messages become system prompt parts, in place; an assistant's tool calls
    must each be answered by a `tool` message before the next other message.

    Raises:
        APIError: A message cannot be converted (400).
    """
    history: list[ModelMessage] = []
    pending: dict[str, str] = {}

    def request(part: ModelRequestPart) -> None:
        last = history[-1] if history else None
        if isinstance(last, ModelRequest):
            history[-1] = ModelRequest(parts=[*last.parts, part])
        else:
            history.append(ModelRequest(parts=[part]))

    for index, message in enumerate(messages):
        where = f'messages[{index}]'
        if message.role != 'tool' and pending:
            raise APIError(
                400,
                f'{where}: tool call {next(iter(pending))!r} has no tool message answering it.',
                param=where,
            )
        text = message_text(message.content, where)
        if message.role in ('system', 'developer'):
            request(SystemPromptPart(text))
        elif message.role == 'user':
            request(UserPromptPart(text))
        elif message.role == 'assistant':
            parts: list[ModelResponsePart] = [TextPart(text)] if text else []
            for call in message.tool_calls or []:
                parts.append(ToolCallPart(call.function.name, call.function.arguments, tool_call_id=call.id))
                pending[call.id] = call.function.name
            history.append(ModelResponse(parts=parts))
        else:
            name = pending.pop(message.tool_call_id or '', None)
            if name is None:
                raise APIError(
                    400,
                    f'{where}: tool_call_id {message.tool_call_id!r} answers no earlier tool call.',
                    param=f'{where}.tool_call_id',
                )
            request(ToolReturnPart(name, text, tool_call_id=cast(str, message.tool_call_id)))
    if pending:
        raise APIError(400, f'tool call {next(iter(pending))!r} has no tool message answering it.', param='messages')
    return history


def history_to_openai(messages: Sequence[ModelMessage]) -> list[dict[str, Any]]:
    """Stored messages in OpenAI's message format, typed answers as sent (lossy: `?format=pydantic-ai` is lossless)."""
    converted: list[dict[str, Any]] = []
    for message in as_sent(messages):
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, SystemPromptPart):
                    converted.append({'role': 'system', 'content': part.content})
                elif isinstance(part, UserPromptPart):
                    content = part.content if isinstance(part.content, str) else str(part.content)
                    converted.append({'role': 'user', 'content': content})
                elif isinstance(part, ToolReturnPart):
                    converted.append(
                        {'role': 'tool', 'tool_call_id': part.tool_call_id, 'content': part.model_response_str()}
                    )
        else:
            text = ''.join(part.content for part in message.parts if isinstance(part, TextPart))
            calls = [
                {
                    'id': part.tool_call_id,
                    'type': 'function',
                    'function': {'name': part.tool_name, 'arguments': part.args_as_json_str()},
                }
                for part in message.parts
                if isinstance(part, ToolCallPart)
            ]
            entry: dict[str, Any] = {'role': 'assistant', 'content': text or None}
            if calls:
                entry['tool_calls'] = calls
            converted.append(entry)
    return converted


def session_json(info: SessionInfo) -> dict[str, Any]:
    return {
        'id': info.id,
        'object': 'session',
        'title': info.title,
        'user': info.user,
        'message_count': info.message_count,
        'updated_at': int(info.updated_at.timestamp()),
        'usage': {
            'requests': info.usage.requests,
            'tool_calls': info.usage.tool_calls,
            'input_tokens': info.usage.input_tokens,
            'output_tokens': info.usage.output_tokens,
        },
    }


def kb_json(info: KbInfo) -> dict[str, Any]:
    return {
        'id': info.label,
        'object': 'knowledge_base',
        'name': info.name,
        'user': info.user,
        'documents': info.docs,
        'chunks': info.chunks,
        'tokens': info.tokens,
        'embedding_model': info.embed_model,
        'created_at': info.created_at,
        'updated_at': info.updated_at,
    }


OPEN_WEBUI_TASK = '### Task:'
"""How Open WebUI's background prompts (a title, tags, follow-up suggestions, a search query) begin."""


def open_webui_task(text: str) -> bool:
    """Whether a message is one of Open WebUI's background prompts, which it sends with the chat's id."""
    return text.lstrip().startswith(OPEN_WEBUI_TASK)


def usage_of(usage: TurnUsage) -> CompletionUsage:
    """A turn's tokens, as OpenAI counts them."""
    return CompletionUsage(
        prompt_tokens=usage.input_tokens, completion_tokens=usage.output_tokens, total_tokens=usage.total_tokens
    )


def completion_json(result: TurnResult, completion_id: str, model: str, *, stored: bool = True) -> dict[str, Any]:
    """A chat completion; `stored` says whether the turn was kept in `result.session` (a stateless one is not)."""
    completion = ChatCompletion(
        id=completion_id,
        object='chat.completion',
        created=int(time.time()),
        model=model,
        system_fingerprint=None,
        choices=[
            Choice(
                index=0,
                message=ChatCompletionMessage(role='assistant', content=result.answer, refusal=None),
                logprobs=None,
                finish_reason='stop',
            )
        ],
        usage=usage_of(result.usage),
    )
    tandem = {
        'session': result.session if stored else None,
        'backbone': result.backbone,
        'prompt': result.prompt,
        'run_id': result.run_id,
        'tool_calls': [
            {'name': call.name, 'args': call.args, 'ok': call.ok, 'duration_s': round(call.duration_s, 4)}
            for call in result.tool_calls
        ],
    }
    return {**_wire(completion), 'tandem': tandem}


def chunk_json(
    completion_id: str,
    created: int,
    model: str,
    *,
    delta: ChoiceDelta | None = None,
    finish: Literal['stop'] | None = None,
    usage: TurnUsage | None = None,
    include_usage: bool,
    **extra: Any,
) -> dict[str, Any]:
    """One streamed chunk: a delta (none for a usage or progress chunk), its usage when asked for, and `extra`
    fields (Tandem's extensions) after OpenAI's."""
    chunk = ChatCompletionChunk(
        id=completion_id,
        object='chat.completion.chunk',
        created=created,
        model=model,
        system_fingerprint=None,
        choices=[] if delta is None else [ChunkChoice(index=0, delta=delta, logprobs=None, finish_reason=finish)],
    )
    if include_usage:  # set, even to None, so it is sent: OpenAI's chunks carry it only when asked for
        chunk.usage = usage_of(usage) if usage is not None else None
    return {**_wire(chunk), **extra}


def model_json(name: str, kind: str) -> dict[str, Any]:
    """A backbone, as an OpenAI model object (plus its kind)."""
    return {**_wire(OpenAIModel(id=name, object='model', created=0, owned_by='tandem')), 'kind': kind}


def _wire(value: OpenAIObject) -> dict[str, Any]:
    # Only the fields set: OpenAI's types have many optional ones its own responses leave out.
    return value.model_dump(mode='json', exclude_unset=True)
