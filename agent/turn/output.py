"""Typed answers: what a turn asks the model for when a front end wants data, not prose.

A front end asks with a Python type (a pydantic model, a dataclass, a TypedDict or a union of them),
or with a JSON Schema (`response_format`, `tandem ask --schema`, a scenario's `expect.output`), which
`schema_type` turns into a type that validates against it. pydantic-ai's output machinery does the
rest: the backbone's output mode (`output_spec`) and the retries when the model's answer does not
validate, which `output_retries` counts, since they are a cost of prompting that a fine-tune may remove.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Union, cast, get_args, get_origin

import pydantic_core
from pydantic import GetCoreSchemaHandler, PydanticSchemaGenerationError, PydanticUserError, TypeAdapter
from pydantic_ai import NativeOutput, PromptedOutput, StructuredDict, TextOutput, ToolOutput
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryFeedbackPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_core import core_schema

from tandem.agent.core.errors import BackboneError, TandemError

if TYPE_CHECKING:
    from pydantic_ai.output import OutputSpec

    from tandem.agent.backbones.base import Backbone

__all__ = [
    'ANSWER_METADATA',
    'OUTPUT_TOOLS_METADATA',
    'OutputMode',
    'OutputSchemaError',
    'UnsupportedOutputError',
    'answer_json',
    'as_sent',
    'check_output_type',
    'concise_schema',
    'list_schema',
    'load_schema',
    'mark_answer',
    'output_retries',
    'output_spec',
    'schema_type',
]

OutputMode = Literal['tool', 'native', 'prompted']
"""How a backbone is asked for a typed answer: an output tool call, the server's JSON-schema
`response_format`, or the schema in the instructions (any model; validated all the same)."""


ANSWER_METADATA = 'tandem.answer'
"""The key of a typed answer's JSON, as it was sent, in the `metadata` of the response that gave it."""
OUTPUT_TOOLS_METADATA = 'tandem.output_tools'
"""The key of the names of the output tools the turn offered, whose calls carried the answer."""


class OutputSchemaError(TandemError, ValueError):
    """A schema or output type Tandem cannot ask a model for; the message names what to change."""


class UnsupportedOutputError(BackboneError):
    """The backbone's output mode is one its model cannot follow."""


# -- JSON Schemas as output types ------------------------------------------------------------------


def schema_type(
    schema: Mapping[str, Any], *, name: str | None = None, description: str | None = None
) -> type[dict[str, Any]]:
    """A `dict` type whose JSON Schema is `schema`, and whose values must validate against it.

    The model is shown `schema` as it is; what it answers is checked with `jsonschema`, and an answer
    that fails is sent back to it with the errors, as a pydantic validation error is.

    Raises:
        OutputSchemaError: `schema` is not a valid JSON Schema, or its root is not an object.
    """
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    schema = dict(schema)
    if schema.get('type') != 'object':
        raise OutputSchemaError(
            'the schema\'s root must be an object ("type": "object"): put a list or a value in a property of one.'
        )
    validator_class: Any = validator_for(schema)
    try:
        validator_class.check_schema(schema)
    except SchemaError as error:
        where = '/'.join(str(part) for part in error.path) or 'its root'
        raise OutputSchemaError(f'invalid JSON Schema at {where}: {error.message}') from None
    validator: Any = validator_class(schema)
    try:
        described = StructuredDict(schema, name=name, description=description)
    except UserError as error:
        raise OutputSchemaError(f'unsupported JSON Schema: {error}') from None

    def check(value: dict[str, Any]) -> dict[str, Any]:
        errors: list[Any] = sorted(validator.iter_errors(value), key=lambda error: list(error.absolute_path))
        if errors:
            raise ValueError('; '.join(_schema_error(error) for error in errors[:5]))
        return value

    class _SchemaDict(described):  # pyright: ignore[reportUntypedBaseClass,reportGeneralTypeIssues]
        @classmethod
        def __get_pydantic_core_schema__(
            cls, source_type: Any, handler: GetCoreSchemaHandler
        ) -> core_schema.CoreSchema:
            return core_schema.no_info_after_validator_function(
                check, core_schema.dict_schema(keys_schema=core_schema.str_schema())
            )

    return _SchemaDict


def _schema_error(error: Any) -> str:
    where = '/'.join(str(part) for part in error.absolute_path)
    return f'{where}: {error.message}' if where else str(error.message)


_CONCISE_TYPES: dict[str, dict[str, Any]] = {
    'str': {'type': 'string'},
    'string': {'type': 'string'},
    'int': {'type': 'integer'},
    'integer': {'type': 'integer'},
    'float': {'type': 'number'},
    'number': {'type': 'number'},
    'bool': {'type': 'boolean'},
    'boolean': {'type': 'boolean'},
}
_CONCISE_FIELD = re.compile(r'^(?P<name>[A-Za-z_][\w-]*)(?:\s+(?P<type>[^:]+?))?\s*(?::\s*(?P<description>.*))?$')


def concise_schema(spec: str) -> dict[str, Any]:
    """llm's concise schema, `'name str, age int, tags list[str]'`, as a JSON Schema.

    Fields are separated by commas, or by newlines when there are any; each is `name [type][: description]`,
    the type one of str, int, float, bool or list[...] of them (str when left out). Every field is required.

    Raises:
        OutputSchemaError: A field cannot be read; the message names it.
    """
    items = spec.splitlines() if '\n' in spec else spec.split(',')
    properties: dict[str, Any] = {}
    for item in (item.strip() for item in items):
        if not item:
            continue
        match = _CONCISE_FIELD.match(item)
        if match is None:
            raise OutputSchemaError(f"cannot read schema field {item!r}: write 'name type', e.g. 'age int'.")
        name = match['name']
        prop = dict(_concise_type(name, (match['type'] or 'str').strip()))
        if match['description']:
            prop['description'] = match['description'].strip()
        properties[name] = prop
    if not properties:
        raise OutputSchemaError("the schema has no fields: write them as 'name str, age int'.")
    return {'type': 'object', 'properties': properties, 'required': list(properties), 'additionalProperties': False}


def _concise_type(name: str, type_name: str) -> dict[str, Any]:
    lowered = type_name.replace(' ', '').lower()
    if lowered in _CONCISE_TYPES:
        return _CONCISE_TYPES[lowered]
    if lowered.startswith('list[') and lowered.endswith(']'):
        return {'type': 'array', 'items': _concise_type(name, lowered[5:-1])}
    if lowered == 'list':
        return {'type': 'array', 'items': {'type': 'string'}}
    raise OutputSchemaError(f'field {name!r} has unknown type {type_name!r}: use str, int, float, bool or list[...].')


def load_schema(spec: str, *, what: str = 'the schema', base: Path | None = None) -> dict[str, Any]:
    """A schema given as text: a JSON Schema file, a JSON Schema written inline, or llm's concise form.

    Args:
        spec: A path to a `.json` file (relative to `base`), `{...}`, or `'name str, age int'`.
        what: How the messages name the schema, e.g. `--schema`.
        base: The directory relative paths start from; the working directory when `None`.

    Raises:
        OutputSchemaError: The file cannot be read, or the text is neither JSON nor the concise form.
    """
    text = spec.strip()
    if not text.startswith('{'):
        path = Path(text).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        if path.suffix.lower() == '.json' or path.is_file():
            try:
                text = path.read_text(encoding='utf-8').strip()
            except (OSError, UnicodeDecodeError) as error:
                why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
                raise OutputSchemaError(f'cannot read {what} file {spec}: {why}.') from None
            what = f'{what} file {spec}'
    if not text.startswith('{'):
        return concise_schema(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise OutputSchemaError(
            f'{what} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}.'
        ) from None
    if not isinstance(value, dict):
        raise OutputSchemaError(f'{what} is not a JSON Schema: expected an object, {{"type": "object", ...}}.')
    return cast(dict[str, Any], value)


def list_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A schema for a list of `schema`'s objects (`--schema-multi`): `{"items": [...]}`, as llm does.

    Models follow an object at the root better than a bare array, which OpenAI's structured outputs refuse.
    """
    return {
        'type': 'object',
        'properties': {'items': {'type': 'array', 'items': dict(schema)}},
        'required': ['items'],
        'additionalProperties': False,
    }


# -- Python types ----------------------------------------------------------------------------------


def check_output_type(output_type: Any) -> None:
    """Refuse a type whose JSON Schema cannot be made, before the model is asked for it.

    Raises:
        OutputSchemaError: Pydantic cannot make a JSON Schema for it (an arbitrary class, a callable).
    """
    if isinstance(output_type, _MARKERS):
        return
    for member in _members(output_type):
        try:
            TypeAdapter(member).json_schema()
        except (PydanticSchemaGenerationError, PydanticUserError, TypeError) as error:
            if isinstance(error, PydanticSchemaGenerationError):
                why = 'it has no JSON Schema; use a pydantic model, a dataclass, a TypedDict or a union of them'
            else:
                why = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise OutputSchemaError(f'cannot ask for {_type_name(member)} as a typed answer: {why}') from None


_MARKERS = (ToolOutput, NativeOutput, PromptedOutput, TextOutput)
"""pydantic-ai's output-mode markers: a program that picks the mode itself gets it as it asked."""


def _members(output_type: Any) -> list[Any]:
    if get_origin(output_type) in (Union, UnionType):
        return list(get_args(output_type))
    if isinstance(output_type, Sequence) and not isinstance(output_type, str):
        return list(output_type)  # pyright: ignore[reportUnknownArgumentType]
    return [output_type]


def _type_name(output_type: Any) -> str:
    return getattr(output_type, '__name__', None) or repr(output_type)


def output_spec(output_type: Any, backbone: Backbone, *, strict: bool | None = None) -> OutputSpec[Any]:
    """`output_type` wrapped for the backbone's output mode (`output_mode` in its config).

    Without one, the model profile's default is used, or `prompted` for a model without tool calls:
    prompted output works on any model, and its answer is validated and retried all the same.

    Raises:
        UnsupportedOutputError: The configured mode is one the backbone's model cannot follow.
    """
    if isinstance(output_type, _MARKERS):
        return output_type  # pyright: ignore[reportUnknownVariableType]
    profile = backbone.model.profile
    mode: OutputMode | None = backbone.config.output_mode
    if mode is None:
        default = profile.get('default_structured_output_mode', 'tool')
        mode = default if default in ('tool', 'native', 'prompted') else 'tool'
        if mode == 'tool' and not profile.get('supports_tools', True):
            mode = 'prompted'
    elif mode == 'tool' and not profile.get('supports_tools', True):
        raise _cannot_follow(backbone, mode, 'its model has no tool calls')
    elif mode == 'native' and not profile.get('supports_json_schema_output', False):
        raise _cannot_follow(backbone, mode, "its model has no JSON-schema output (OpenAI's response_format)")
    members = _members(output_type)
    if mode == 'tool':
        if len(members) > 1:  # one output tool per member, each with its own object schema
            return [ToolOutput(member, strict=strict) for member in members]
        return ToolOutput(members[0], strict=strict)
    if mode == 'native':
        return NativeOutput(members, strict=strict)
    return PromptedOutput(members)


def _cannot_follow(backbone: Backbone, mode: str, why: str) -> UnsupportedOutputError:
    return UnsupportedOutputError(
        f'backbone {backbone.name!r} cannot give typed answers in output_mode {mode!r}: {why}. Set output_mode to '
        f"'prompted' (or remove it) under [backbones.{backbone.name}] in tandem.toml."
    )


# -- answers ---------------------------------------------------------------------------------------


def answer_json(output: Any) -> str:
    """A typed answer as it is sent: compact JSON, as the service puts it in `message.content`."""
    return pydantic_core.to_json(output).decode()


def output_retries(messages: Sequence[ModelMessage], output_tools: set[str]) -> int:
    """How often the model was sent back because its answer was not valid output.

    That is retry feedback on a whole response (invalid native or prompted output, prose where an
    output tool call was due), and retried calls of the output tools; a function tool's retries are
    the tool's, not the answer's.
    """
    count = 0
    for message in messages:
        if not isinstance(message, ModelRequest):
            continue
        for part in message.parts:
            if isinstance(part, RetryFeedbackPart) or (
                isinstance(part, ToolReturnPart) and part.outcome == 'retried' and part.tool_name in output_tools
            ):
                count += 1
    return count


def mark_answer(response: ModelResponse, answer: str, output_tools: Iterable[str]) -> None:
    """Keep a typed answer's JSON, as sent, with the response that gave it (see `as_sent`)."""
    response.metadata = {
        **(response.metadata or {}),
        ANSWER_METADATA: answer,
        OUTPUT_TOOLS_METADATA: sorted(output_tools),
    }


def as_sent(messages: Sequence[ModelMessage]) -> list[ModelMessage]:
    """The conversation as its user saw it: each typed answer as the assistant's JSON text.

    How an answer was asked for is left out: output tool calls and their returns, and the attempts
    that failed validation with the feedback they got. This is what `tandem tune export` writes, so
    a fine-tune learns to answer in the format, not to retry.
    """
    output_tools: set[str] = set()
    dropped_calls: set[str] = set()
    for message in messages:
        if isinstance(message, ModelResponse) and message.metadata and ANSWER_METADATA in message.metadata:
            output_tools.update(message.metadata.get(OUTPUT_TOOLS_METADATA, ()))
            dropped_calls.update(part.tool_call_id for part in message.tool_calls)
    failed: set[int] = set()
    for index, message in enumerate(messages):
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, RetryFeedbackPart) and index > 0:
                    failed.add(index - 1)
                elif isinstance(part, ToolReturnPart) and part.tool_name in output_tools:
                    dropped_calls.add(part.tool_call_id)
    sent: list[ModelMessage] = []
    for index, message in enumerate(messages):
        if isinstance(message, ModelResponse):
            answer = (message.metadata or {}).get(ANSWER_METADATA)
            if answer is not None:
                sent.append(replace(message, parts=[TextPart(answer)]))
                continue
            parts = [p for p in message.parts if not (isinstance(p, ToolCallPart) and p.tool_call_id in dropped_calls)]
            if index in failed or (
                len(parts) < len(message.parts) and not any(isinstance(p, ToolCallPart) for p in parts)
            ):
                continue  # an attempt that failed validation
            sent.append(message if len(parts) == len(message.parts) else replace(message, parts=parts))
        else:
            kept = [
                part
                for part in message.parts
                if not isinstance(part, RetryFeedbackPart)
                and not (isinstance(part, ToolReturnPart) and part.tool_call_id in dropped_calls)
            ]
            if kept:
                sent.append(message if len(kept) == len(message.parts) else replace(message, parts=kept))
    return sent
