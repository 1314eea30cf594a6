"""In-process GGUF models: the `llama-cpp:` backbone, through llama-cpp-python (the `tandem[local]` extra).

```toml
[backbones.local]
model = "llama-cpp:~/.local/share/tandem/models/qwen2.5-1.5b-instruct-q4_k_m.gguf"

[backbones.local-tuned]   # the same base with a LoRA adapter (GGUF), e.g. from `convert_lora_to_gguf.py`
model = "llama-cpp:qwen2.5-1.5b-instruct?lora=~/adapters/support.gguf&n_ctx=8192"
kind = "fine-tuned"
base_model = "Qwen/Qwen2.5-1.5B-Instruct"
```

The part after `llama-cpp:` is a GGUF path, or a name `tandem models pull` knows (looked up in
`TANDEM_HOME/models`), then optional query parameters: `lora` (a GGUF LoRA adapter), `lora_scale`,
`n_ctx` (default: the model's training context, at most 8192), `n_threads`, `n_gpu_layers`, `seed`.

How it runs: the backbone is pydantic-ai's `OpenAIChatModel`, whose HTTP transport is replaced by
one that answers `/v1/chat/completions` in process, on a worker thread, with llama.cpp. No port, no
subprocess and no server extras; and because pydantic-ai's own chat-completions mapping renders the
conversation, a llama-cpp backbone sees exactly the message format that `openai-chat:` backbones
(vLLM, Ollama) see and that `tandem tune export` writes. The engine renders that conversation with
the GGUF's own chat template (with the `tools`), generates, and turns tool calls written in the
common open-model forms back into OpenAI `tool_calls`:

- Hermes / Qwen 2.5: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`;
- Llama 3.x: a bare JSON object `{"name": ..., "parameters": {...}}` (optionally after `<|python_tag|>`);
- Mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}]`.

A call is only recognised when it names one of the request's tools; anything else is text, so a
model that answers in prose (or in gibberish) simply answers. With `tool_choice` set to `required`
or to one function, generation is constrained by a grammar built from the tools' JSON schemas, so
the call is well-formed whatever the model. A model without a chat template gets a ChatML one with
Hermes-style tool instructions.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import contextlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl

import httpx
from pydantic_ai.models import Model

from tandem.agent.core.config import BackboneConfig
from tandem.agent.core.errors import BackboneError

__all__ = [
    'CATALOG',
    'LOCAL_EXTRA_HINT',
    'CatalogEntry',
    'LlamaCppEngine',
    'LlamaCppResolver',
    'LlamaCppSpec',
    'StreamSplitter',
    'close_engines',
    'engine_for',
    'models_dir',
    'parse_spec',
    'parse_tool_calls',
]

_MAX_DEFAULT_CTX = 8192
_FAKE_BASE_URL = 'http://llama-cpp.in-process/v1'
# The exact command, for a checkout (`make chat` installs the core only) and for a pip install.
LOCAL_EXTRA_HINT = (
    'install the local extra: `make local` in a Tandem checkout (it compiles llama.cpp: a C++ compiler and a '
    "few minutes), or `pip install 'tandem[local]'`"
)


@dataclass(frozen=True)
class CatalogEntry:
    """A small instruct GGUF `tandem models pull NAME` knows how to fetch from Hugging Face."""

    repo: str
    file: str
    size: str
    """Approximate download size, for the help text."""
    description: str

    @property
    def path(self) -> str:
        """`repo/resolve/main/file`, appended to the Hugging Face endpoint."""
        return f'{self.repo}/resolve/main/{self.file}'


CATALOG: dict[str, CatalogEntry] = {
    'qwen2.5-0.5b-instruct': CatalogEntry(
        'Qwen/Qwen2.5-0.5B-Instruct-GGUF', 'qwen2.5-0.5b-instruct-q4_k_m.gguf', '0.4 GB', 'smallest; tool calls work'
    ),
    'qwen2.5-1.5b-instruct': CatalogEntry(
        'Qwen/Qwen2.5-1.5B-Instruct-GGUF', 'qwen2.5-1.5b-instruct-q4_k_m.gguf', '1.1 GB', 'good tool use for its size'
    ),
    'qwen2.5-3b-instruct': CatalogEntry(
        'Qwen/Qwen2.5-3B-Instruct-GGUF', 'qwen2.5-3b-instruct-q4_k_m.gguf', '2.1 GB', 'the best of these at tools'
    ),
    'llama-3.2-1b-instruct': CatalogEntry(
        'bartowski/Llama-3.2-1B-Instruct-GGUF', 'Llama-3.2-1B-Instruct-Q4_K_M.gguf', '0.8 GB', 'Llama 3.2 1B'
    ),
    'llama-3.2-3b-instruct': CatalogEntry(
        'bartowski/Llama-3.2-3B-Instruct-GGUF', 'Llama-3.2-3B-Instruct-Q4_K_M.gguf', '2.0 GB', 'Llama 3.2 3B'
    ),
}
"""Names for `tandem models pull` and for `llama-cpp:NAME`."""


def models_dir() -> Path:
    """Where pulled models live: `TANDEM_HOME/models`."""
    from tandem.agent.core.config import default_home, load_settings
    from tandem.agent.core.errors import TandemError

    try:
        home = load_settings().home
    except TandemError:
        home = Path(os.environ['TANDEM_HOME']).expanduser() if os.environ.get('TANDEM_HOME') else default_home()
    return home / 'models'


# -- the model string ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlamaCppSpec:
    """A parsed `llama-cpp:` model string."""

    path: Path
    lora: Path | None = None
    lora_scale: float = 1.0
    n_ctx: int | None = None
    """`None`: the model's training context, at most 8192."""
    n_threads: int | None = None
    n_gpu_layers: int = 0
    seed: int | None = None

    @property
    def name(self) -> str:
        """The model's name in responses: the file name without `.gguf`, plus the adapter's."""
        name = self.path.name.removesuffix('.gguf')
        return f'{name}+{self.lora.name.removesuffix(".gguf")}' if self.lora else name


def parse_spec(model: str, *, directory: Path | None = None) -> LlamaCppSpec:
    """Parse `llama-cpp:PATH_OR_NAME[?lora=PATH&lora_scale=F&n_ctx=N&n_threads=N&n_gpu_layers=N&seed=N]`.

    Raises:
        BackboneError: The string is malformed, an option is unknown or not a number, or a file is missing.
    """
    prefix, _, rest = model.partition(':')
    if prefix != 'llama-cpp' or not rest:
        raise BackboneError(f'{model!r} is not a llama-cpp model string: write llama-cpp:PATH.gguf')
    location, _, query = rest.partition('?')
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else {}
    known = {'lora', 'lora_scale', 'n_ctx', 'n_threads', 'n_gpu_layers', 'seed'}
    unknown = sorted(set(options) - known)
    if unknown:
        raise BackboneError(f'{model!r}: unknown option(s) {", ".join(unknown)}; known: {", ".join(sorted(known))}.')

    def number(key: str, kind: type[int] | type[float]) -> Any:
        if key not in options:
            return None
        try:
            return kind(options[key])
        except ValueError:
            raise BackboneError(f'{model!r}: {key}={options[key]!r} is not a number.') from None

    path = _model_path(location, directory)
    lora = Path(options['lora']).expanduser() if options.get('lora') else None
    if lora is not None and not lora.is_file():
        raise BackboneError(f'LoRA adapter {lora} not found: give the path of a GGUF adapter.')
    return LlamaCppSpec(
        path=path,
        lora=lora,
        lora_scale=number('lora_scale', float) or 1.0,
        n_ctx=number('n_ctx', int),
        n_threads=number('n_threads', int),
        n_gpu_layers=number('n_gpu_layers', int) or 0,
        seed=number('seed', int),
    )


def _model_path(location: str, directory: Path | None) -> Path:
    folder = directory or models_dir()
    if location in CATALOG:
        path = folder / CATALOG[location].file
        if not path.is_file():
            raise BackboneError(f'model {location!r} is not downloaded yet: run `tandem models pull {location}`.')
        return path
    path = Path(location).expanduser()
    if not path.is_absolute() and not path.is_file() and (folder / path).is_file():
        path = folder / path
    if not path.is_file():
        known = ', '.join(CATALOG)
        raise BackboneError(
            f'GGUF file {path} not found: give a path, or pull one of {known} with `tandem models pull`.'
        )
    return path


# -- tool calls in text ---------------------------------------------------------------------------------

_HERMES = re.compile(r'<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)', re.DOTALL)
_FENCE = re.compile(r'^```(?:json)?\s*(.*?)\s*```$', re.DOTALL)
_MARKERS = ('<tool_call>', '[TOOL_CALLS]', '<|python_tag|>')


def _call_objects(value: Any) -> list[dict[str, Any]]:
    items = cast(list[Any], value) if isinstance(value, list) else [value]
    return [cast(dict[str, Any], item) for item in items if isinstance(item, dict)]


def _as_call(item: Mapping[str, Any], names: set[str]) -> tuple[str, str] | None:
    function: Any = item.get('function')
    if isinstance(function, dict):  # an OpenAI-shaped call
        item = cast(dict[str, Any], function)
    name = item.get('name')
    if not isinstance(name, str) or (names and name not in names):
        return None
    arguments: Any = item.get('arguments', item.get('parameters', {}))
    if isinstance(arguments, str):
        return name, arguments
    return name, json.dumps(arguments, ensure_ascii=False)


def _json_values(text: str) -> list[Any] | None:
    """`text` as one JSON value, or several separated by `;` or newlines; `None` if it is not JSON."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    decoder = json.JSONDecoder(strict=False)  # small models put raw control characters in strings
    values: list[Any] = []
    position = 0
    while position < len(text):
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return None
        values.append(value)
        while position < len(text) and text[position] in ' \t\r\n;,':
            position += 1
    return values or None


def parse_tool_calls(text: str, tool_names: set[str]) -> tuple[str, list[tuple[str, str]]]:
    """Split generated text into its prose and its tool calls `(name, arguments JSON)`.

    Recognises Hermes/Qwen `<tool_call>` blocks, Mistral `[TOOL_CALLS]`, Llama 3.x JSON (after
    `<|python_tag|>` or alone). A call must name one of `tool_names` (when any are given); text
    that merely looks like JSON stays text.
    """
    if '<tool_call>' in text:
        calls: list[tuple[str, str]] = []
        for block in _HERMES.findall(text):
            for item in _call_objects(_json_values(block) or []):
                if (call := _as_call(item, tool_names)) is not None:
                    calls.append(call)
        if calls:
            return _HERMES.sub('', text).strip(), calls
        return text, []
    stripped = text.strip()
    for marker in ('[TOOL_CALLS]', '<|python_tag|>'):
        if stripped.startswith(marker):
            stripped = stripped[len(marker) :].strip()
            break
    values = _json_values(stripped) if stripped[:1] in '{[`' else None
    if values:
        items = [item for value in values for item in _call_objects(value)]
        found = [call for item in items if (call := _as_call(item, tool_names)) is not None]
        if found and len(found) == len(items):
            return '', found
    return text, []


class StreamSplitter:
    """Streams text while holding back whatever may turn out to be a tool call.

    Text is released as soon as it cannot be the start of a call: a `<tool_call>` marker (or a
    prefix of one at the end) holds everything from there; output that starts like JSON or a
    `[TOOL_CALLS]` / `<|python_tag|>` marker is held whole until the end.
    """

    def __init__(self, tool_names: set[str]) -> None:
        self._names = tool_names
        self._text = ''
        self._released = 0
        self._hold_all = False

    def feed(self, piece: str) -> str:
        """Add generated text; returns the part that is safe to show now."""
        self._text += piece
        if not self._names:
            return self._release(len(self._text))
        if self._hold_all:
            return ''
        if self._released == 0:
            head = self._text.lstrip()
            if not head:
                return ''
            if head[0] in '{[`' or head.startswith(_MARKERS[1:]):
                self._hold_all = True  # the whole output may be one call: decide at the end
                return ''
            if any(marker.startswith(head) for marker in _MARKERS[1:]):
                return ''  # still could become a marker
        marker = self._text.find('<tool_call>', self._released)
        if marker >= 0:
            self._hold_all = True
            return self._release(marker)
        cut = len(self._text)
        last = self._text.rfind('<', self._released)
        if last >= 0 and '<tool_call>'.startswith(self._text[last:]):
            cut = last
        return self._release(cut)

    def _release(self, upto: int) -> str:
        out = self._text[self._released : upto]
        self._released = max(self._released, upto)
        return out

    def finish(self) -> tuple[str, list[tuple[str, str]]]:
        """The text not yet released, and the tool calls, once generation ended."""
        content, calls = parse_tool_calls(self._text, self._names)
        shown = self._text[: self._released]
        if not calls:
            return self._text[self._released :], []
        rest = content[len(shown) :] if content.startswith(shown) else ''
        return rest, calls


# -- the engine ---------------------------------------------------------------------------------------

_FALLBACK_TEMPLATE = """{%- set system = messages[0].content if messages and messages[0].role == 'system' else none -%}
{%- if tools -%}
<|im_start|>system
{{ system if system else 'You are a helpful assistant.' }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif system %}<|im_start|>system
{{ system }}<|im_end|>
{% endif -%}
{%- for message in messages -%}
{%- if message.role == 'system' and loop.first -%}
{%- elif message.role == 'tool' -%}
<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role == 'assistant' -%}
<|im_start|>assistant
{% if message.content %}{{ message.content }}{% endif %}
{%- for call in message.tool_calls or [] %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% else -%}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}"""


class EngineError(Exception):
    """A request the engine refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LlamaCppEngine:
    """One GGUF model (and adapter) loaded in this process, answering OpenAI chat-completion bodies.

    The model loads on first use. Requests are served one at a time (a llama.cpp context is not
    thread-safe); llama-cpp-python keeps the KV cache of the longest common prompt prefix, so the
    next turn of a conversation only evaluates what is new.
    """

    def __init__(self, spec: LlamaCppSpec) -> None:
        self.spec = spec
        self._llama: Any = None
        self._formatter: Any = None
        self._lock = threading.Lock()

    # -- loading --

    def load(self) -> Any:
        """The `llama_cpp.Llama`, loaded now if it was not yet.

        Raises:
            EngineError: llama-cpp-python is missing, or it refused the file.
        """
        if self._llama is not None:
            return self._llama
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as error:
            raise EngineError(500, f'llama-cpp backbones need llama-cpp-python: {LOCAL_EXTRA_HINT}') from error
        spec = self.spec
        options: dict[str, Any] = {'n_gpu_layers': spec.n_gpu_layers, 'verbose': False}
        if spec.n_threads:
            options['n_threads'] = spec.n_threads
        if spec.seed is not None:
            options['seed'] = spec.seed
        if spec.lora is not None:
            options.update(lora_path=str(spec.lora), lora_scale=spec.lora_scale)
        try:
            n_ctx = spec.n_ctx or _trained_context(Llama, spec.path)
            llama = Llama(str(spec.path), n_ctx=n_ctx, **options)
        except (ValueError, RuntimeError, OSError) as error:
            raise EngineError(500, f'llama.cpp cannot load {spec.path}: {error}') from error
        metadata: dict[str, str] = llama.metadata
        template = metadata.get('tokenizer.chat_template') or _FALLBACK_TEMPLATE
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=_token_text(llama, llama.token_eos()),
            bos_token=_token_text(llama, llama.token_bos()),
        )
        self._llama = llama
        return llama

    def close(self) -> None:
        """Free the model."""
        with self._lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None

    # -- requests --

    def chat(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Answer a chat-completion request body (not streamed)."""
        text_parts: list[str] = []
        calls: list[dict[str, Any]] = []
        finish = 'stop'
        usage: dict[str, int] = {}
        for event in self._generate(body, threading.Event()):
            kind = event[0]
            if kind == 'text':
                text_parts.append(event[1])
            elif kind == 'calls':
                calls = event[1]
            elif kind == 'end':
                finish, usage = event[1], event[2]
        message: dict[str, Any] = {'role': 'assistant', 'content': ''.join(text_parts) or None}
        if calls:
            message['tool_calls'] = calls
        return {
            'id': f'chatcmpl-{uuid.uuid4().hex[:12]}',
            'object': 'chat.completion',
            'created': int(time.time()),
            'model': self.spec.name,
            'choices': [{'index': 0, 'message': message, 'finish_reason': finish}],
            'usage': usage,
        }

    def chat_stream(self, body: Mapping[str, Any], cancelled: threading.Event) -> Iterator[dict[str, Any]]:
        """Answer a chat-completion request body as stream chunks; stops early once `cancelled` is set."""
        base = {
            'id': f'chatcmpl-{uuid.uuid4().hex[:12]}',
            'object': 'chat.completion.chunk',
            'created': int(time.time()),
            'model': self.spec.name,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': finish}]}

        options: Any = body.get('stream_options') or {}
        include_usage = bool(cast(dict[str, Any], options).get('include_usage'))
        yield chunk({'role': 'assistant', 'content': ''})
        for event in self._generate(body, cancelled):
            if event[0] == 'text' and event[1]:
                yield chunk({'content': event[1]})
            elif event[0] == 'calls':
                for index, call in enumerate(event[1]):
                    yield chunk({'tool_calls': [{'index': index, **call}]})
            elif event[0] == 'end':
                yield chunk({}, event[1])
                if include_usage:
                    yield {**base, 'choices': [], 'usage': event[2]}

    def _generate(self, body: Mapping[str, Any], cancelled: threading.Event) -> Iterator[tuple[Any, ...]]:
        """Events: `('text', str)`, then `('calls', [...])` if any, then `('end', finish, usage)`."""
        with self._lock:
            llama = self.load()
            tools = _tools(body)
            choice: Any = body.get('tool_choice')
            if choice == 'none':
                tools = []
            names = {str(tool['function']['name']) for tool in tools}
            prompt = self._formatter(messages=_template_messages(body), tools=tools or None, tool_choice=choice)
            tokens = self._tokens(llama, prompt.prompt)
            n_ctx = int(llama.n_ctx())
            if len(tokens) >= n_ctx:
                raise EngineError(
                    400,
                    f'the prompt is {len(tokens)} tokens, over the model context of {n_ctx}: '
                    'raise n_ctx in the model string (llama-cpp:FILE?n_ctx=8192) or shorten the conversation.',
                )
            requested = body.get('max_completion_tokens') or body.get('max_tokens') or 1024
            max_tokens = max(1, min(int(requested), n_ctx - len(tokens)))
            grammar = _forced_call_grammar(tools, choice) if tools else None
            splitter = StreamSplitter(names if grammar is None else set())
            stops = _StopScanner(body.get('stop'))
            seed = body.get('seed') if body.get('seed') is not None else self.spec.seed
            if seed is not None:
                llama.set_seed(int(seed))
            generated: list[int] = []
            finish = 'stop'
            text = ''
            decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')
            tokens_out = llama.generate(
                tokens,
                temp=float(body['temperature']) if body.get('temperature') is not None else 0.7,
                top_p=float(body['top_p']) if body.get('top_p') is not None else 0.8,
                repeat_penalty=1.05,
                grammar=grammar,
            )
            try:
                for token in tokens_out:
                    if _is_end_of_generation(llama, token):
                        break
                    generated.append(token)
                    piece = decoder.decode(llama.detokenize([token], prev_tokens=tokens + generated[:-1]))
                    piece, stopped = stops.feed(piece)
                    text += piece
                    if grammar is None and (released := splitter.feed(piece)):
                        yield ('text', released)
                    if stopped or cancelled.is_set():
                        break
                    if len(generated) >= max_tokens:
                        finish = 'length'
                        break
            finally:
                tokens_out.close()
            tail = stops.flush() + decoder.decode(b'', final=True)
            text += tail
            if grammar is not None:
                _, calls = parse_tool_calls(text, names)
                rest = '' if calls else text
            else:
                splitter.feed(tail)
                rest, calls = splitter.finish()
            if rest:
                yield ('text', rest)
            if calls:
                calls_out = [
                    {
                        'id': f'call_{uuid.uuid4().hex[:12]}',
                        'type': 'function',
                        'function': {'name': name, 'arguments': arguments},
                    }
                    for name, arguments in calls
                ]
                yield ('calls', calls_out)
                finish = 'tool_calls'
            usage = {
                'prompt_tokens': len(tokens),
                'completion_tokens': len(generated),
                'total_tokens': len(tokens) + len(generated),
            }
            yield ('end', finish, usage)

    @staticmethod
    def _tokens(llama: Any, prompt: str) -> list[int]:
        tokens: list[int] = llama.tokenize(prompt.encode('utf-8'), add_bos=False, special=True)
        bos = int(llama.token_bos())
        wants_bos = bool(llama._model.add_bos_token()) if hasattr(llama._model, 'add_bos_token') else True
        if wants_bos and bos >= 0 and (not tokens or tokens[0] != bos):
            tokens.insert(0, bos)
        return tokens


class _StopScanner:
    """Cuts generated text at the first stop sequence, holding back what may be the start of one."""

    def __init__(self, stop: Any) -> None:
        items = [stop] if isinstance(stop, str) else list(cast(list[Any], stop or []))
        self._stops = [item for item in items if isinstance(item, str) and item]
        self._held = ''

    def feed(self, piece: str) -> tuple[str, bool]:
        """The text safe to release, and whether a stop sequence was reached."""
        if not self._stops:
            return piece, False
        self._held += piece
        found = [self._held.index(stop) for stop in self._stops if stop in self._held]
        if found:
            out, self._held = self._held[: min(found)], ''
            return out, True
        keep = max(len(stop) - 1 for stop in self._stops)
        cut = len(self._held)
        for size in range(min(keep, len(self._held)), 0, -1):
            if any(stop.startswith(self._held[-size:]) for stop in self._stops):
                cut = len(self._held) - size
                break
        out, self._held = self._held[:cut], self._held[cut:]
        return out, False

    def flush(self) -> str:
        """What was held back, once generation ended without a stop sequence."""
        out, self._held = self._held, ''
        return out


def _is_end_of_generation(llama: Any, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama._model.vocab, token))


def _trained_context(llama_class: Any, path: Path) -> int:
    """The model's training context (from its metadata, read without loading weights), at most 8192."""
    probe = llama_class(str(path), vocab_only=True, verbose=False)
    try:
        metadata = cast(dict[str, str], probe.metadata)
        architecture = metadata.get('general.architecture', 'llama')
        trained = int(metadata.get(f'{architecture}.context_length') or 4096)
    finally:
        probe.close()
    return max(256, min(_MAX_DEFAULT_CTX, trained))


def _token_text(llama: Any, token: int) -> str:
    if token < 0:
        return ''
    try:
        return str(llama._model.token_get_text(token))
    except Exception:  # noqa: BLE001 - an odd vocab: templates that need it will say so
        return ''


def _tools(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    tools: Any = body.get('tools') or []
    return [
        cast(dict[str, Any], tool)
        for tool in cast(list[Any], tools)
        if isinstance(tool, dict) and isinstance(cast(dict[str, Any], tool).get('function'), dict)
    ]


def _template_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OpenAI messages as chat templates expect them: text content, arguments as objects."""
    out: list[dict[str, Any]] = []
    for raw in cast(list[Any], body.get('messages') or []):
        message = dict(cast(dict[str, Any], raw))
        content: Any = message.get('content')
        if isinstance(content, list):
            message['content'] = '\n'.join(
                str(cast(dict[str, Any], part).get('text', ''))
                for part in cast(list[Any], content)
                if isinstance(part, dict)
            )
        elif content is None:
            message['content'] = ''
        if message.get('role') == 'developer':
            message['role'] = 'system'
        calls: list[dict[str, Any]] = []
        for call in cast(list[Any], message.get('tool_calls') or []):
            call = dict(cast(dict[str, Any], call))
            function = dict(cast(dict[str, Any], call.get('function') or {}))
            arguments: Any = function.get('arguments')
            if isinstance(arguments, str):
                with contextlib.suppress(json.JSONDecodeError):
                    function['arguments'] = json.loads(arguments)
            call['function'] = function
            calls.append(call)
        if calls:
            message['tool_calls'] = calls
        out.append(message)
    return out


def _forced_call_grammar(tools: list[dict[str, Any]], choice: Any) -> Any:
    """A grammar that only allows `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` for the tools
    `choice` forces (`required`: any of them; `{"function": {"name": N}}`: that one); `None` otherwise."""
    if choice == 'required':
        chosen = tools
    elif isinstance(choice, dict):
        function = cast(dict[str, Any], cast(dict[str, Any], choice).get('function') or {})
        chosen = [tool for tool in tools if tool['function'].get('name') == function.get('name')]
    else:
        return None
    if not chosen:
        return None
    from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

    variants = [
        {
            'type': 'object',
            'properties': {
                'name': {'const': tool['function']['name']},
                'arguments': tool['function'].get('parameters') or {'type': 'object'},
            },
            'required': ['name', 'arguments'],
        }
        for tool in chosen
    ]
    schema = variants[0] if len(variants) == 1 else {'oneOf': variants}
    rules = re.sub(r'^root ::=', 'call ::=', json_schema_to_gbnf(json.dumps(schema)), count=1, flags=re.MULTILINE)
    return LlamaGrammar.from_string('root ::= "<tool_call>" call "</tool_call>"\n' + rules, verbose=False)


# -- the in-process HTTP transport --------------------------------------------------------------------


class _SSEStream(httpx.AsyncByteStream):
    """Server-sent events produced by the engine on a worker thread, stopped when the reader goes away."""

    def __init__(self, engine: LlamaCppEngine, body: Mapping[str, Any]) -> None:
        self._engine = engine
        self._body = body
        self._cancelled = threading.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        def put(item: bytes | None) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                self._cancelled.set()

        def produce() -> None:
            try:
                for chunk in self._engine.chat_stream(self._body, self._cancelled):
                    put(b'data: ' + json.dumps(chunk).encode() + b'\n\n')
                    if self._cancelled.is_set():
                        break
                put(b'data: [DONE]\n\n')
            except EngineError as error:
                put(b'data: ' + json.dumps({'error': {'message': str(error), 'code': error.status}}).encode() + b'\n\n')
            except Exception as error:  # noqa: BLE001 - reported to the client as an API error
                put(b'data: ' + json.dumps({'error': {'message': f'llama.cpp failed: {error}'}}).encode() + b'\n\n')
            finally:
                put(None)

        producer = loop.run_in_executor(None, produce)
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            self._cancelled.set()
            if producer.done():
                producer.result()

    async def aclose(self) -> None:
        self._cancelled.set()


class InProcessTransport(httpx.AsyncBaseTransport):
    """Answers `GET /v1/models` and `POST /v1/chat/completions` with a `LlamaCppEngine`, in this process."""

    def __init__(self, engine: LlamaCppEngine) -> None:
        self.engine = engine

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.rstrip('/')
        if request.method == 'GET' and path.endswith('/models'):
            return httpx.Response(
                200, json={'object': 'list', 'data': [{'id': self.engine.spec.name, 'object': 'model'}]}
            )
        if request.method != 'POST' or not path.endswith('/chat/completions'):
            return _error(404, f'{request.method} {path} is not served in process')
        try:
            body: Any = json.loads(await request.aread() or b'{}')
        except json.JSONDecodeError:
            return _error(400, 'the request body is not JSON')
        if not isinstance(body, dict):
            return _error(400, 'the request body must be a JSON object')
        body = cast(dict[str, Any], body)
        if body.get('stream'):
            try:
                await asyncio.to_thread(self.engine.load)
            except EngineError as error:
                return _error(error.status, str(error))
            return httpx.Response(
                200, headers={'content-type': 'text/event-stream'}, stream=_SSEStream(self.engine, body)
            )
        try:
            return httpx.Response(200, json=await asyncio.to_thread(self.engine.chat, body))
        except EngineError as error:
            return _error(error.status, str(error))


def _error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={'error': {'message': message, 'type': 'invalid_request_error', 'code': None}})


# -- the resolver -------------------------------------------------------------------------------------

_ENGINES: dict[LlamaCppSpec, LlamaCppEngine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(spec: LlamaCppSpec) -> LlamaCppEngine:
    """The process-wide engine for `spec`: a model is loaded once, however many backbones use it."""
    with _ENGINES_LOCK:
        if not _ENGINES:
            atexit.register(close_engines)  # before llama_cpp's globals are torn down at exit
        engine = _ENGINES.get(spec)
        if engine is None:
            engine = _ENGINES[spec] = LlamaCppEngine(spec)
        return engine


def close_engines() -> None:
    """Free every loaded model (at exit, or to reclaim the memory)."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.close()


class LlamaCppResolver:
    """`llama-cpp:PATH?options`: a GGUF model run in process (see the module docs)."""

    prefixes: tuple[str, ...] = ('llama-cpp',)

    def resolve(self, config: BackboneConfig) -> Model:
        """Build the model; the GGUF file is checked now and loaded on the first request.

        Raises:
            BackboneError: The model string is malformed, a file is missing, or llama-cpp-python is
                not installed.
        """
        import importlib.util

        from openai import AsyncOpenAI
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        if importlib.util.find_spec('llama_cpp') is None:
            raise BackboneError(f'{config.model}: llama-cpp backbones need llama-cpp-python; {LOCAL_EXTRA_HINT}.')
        spec = parse_spec(config.model)
        if spec.seed is None and config.settings.get('seed') is not None:
            spec = replace(spec, seed=int(config.settings['seed']))
        engine = engine_for(spec)
        client = AsyncOpenAI(
            base_url=_FAKE_BASE_URL,
            api_key='in-process',
            max_retries=0,
            # A legacy `httpx` client: the SDK accepts one, and Tandem depends on httpx directly.
            http_client=cast(Any, httpx.AsyncClient(transport=InProcessTransport(engine), timeout=None)),
        )
        return OpenAIChatModel(spec.name, provider=OpenAIProvider(openai_client=client))


# -- downloads ----------------------------------------------------------------------------------------

_HF_ENDPOINT = 'https://huggingface.co'


class NoNetworkError(BackboneError):
    """The download host cannot be reached."""


@dataclass(frozen=True)
class Download:
    """Where a model comes from and where it goes."""

    url: str
    file: str
    """The file name it is saved under."""


def download_source(name: str) -> Download:
    """The URL for `name`: a catalog name, `hf:REPO/FILE.gguf`, or an http(s) URL of a `.gguf` file.

    Catalog and `hf:` names use `$HF_ENDPOINT` (a Hugging Face mirror) when set.

    Raises:
        BackboneError: `name` is none of these.
    """
    endpoint = os.environ.get('HF_ENDPOINT', _HF_ENDPOINT).rstrip('/')
    if name in CATALOG:
        entry = CATALOG[name]
        return Download(f'{endpoint}/{entry.path}', entry.file)
    if name.startswith('hf:'):
        repo_file = name.removeprefix('hf:')
        repo, _, file = repo_file.rpartition('/')
        if repo.count('/') != 1 or not file.endswith('.gguf'):
            raise BackboneError(f'{name!r}: write hf:OWNER/REPO/FILE.gguf')
        return Download(f'{endpoint}/{repo}/resolve/main/{file}', file)
    if re.match(r'https?://', name):
        file = name.split('?', 1)[0].rstrip('/').rsplit('/', 1)[-1]
        if not file.endswith('.gguf'):
            raise BackboneError(f'{name!r} does not name a .gguf file.')
        return Download(name, file)
    known = ', '.join(CATALOG)
    raise BackboneError(f'unknown model {name!r}: pick one of {known}, or give hf:OWNER/REPO/FILE.gguf or a URL.')


def check_network(url: str, *, timeout: float = 4.0) -> None:
    """Make sure the host of `url` answers a TCP connection within `timeout` seconds (DNS included).

    Raises:
        NoNetworkError: It does not; the message says so plainly.
    """
    import concurrent.futures
    import socket
    from urllib.parse import urlsplit

    split = urlsplit(url)
    host = split.hostname or ''
    port = split.port or (443 if split.scheme == 'https' else 80)

    def connect() -> None:
        with socket.create_connection((host, port), timeout=timeout):
            pass

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=timeout + 0.5)
    except concurrent.futures.TimeoutError:
        raise NoNetworkError(f'no network: {host}:{port} did not answer within {timeout:g} s.') from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise NoNetworkError(f'no network: cannot reach {host}:{port} ({reason}).') from error
    finally:
        pool.shutdown(wait=False)


def download(
    source: Download,
    directory: Path,
    *,
    on_progress: Any = None,
    force: bool = False,
) -> Path:
    """Download `source` into `directory`, resuming a partial download; returns the file.

    `on_progress(done_bytes, total_bytes_or_None)` is called as bytes arrive. The file is written as
    `FILE.part` and renamed once complete and checked to start with the GGUF magic.

    Raises:
        NoNetworkError: The host cannot be reached.
        BackboneError: The server refused, the transfer broke off, or the file is not a GGUF.
    """
    target = directory / source.file
    if target.is_file() and not force:
        return target
    check_network(source.url)
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / (source.file + '.part')
    done = partial.stat().st_size if partial.exists() and not force else 0
    headers = {'Range': f'bytes={done}-'} if done else {}
    timeout = httpx.Timeout(60.0, connect=10.0)
    try:
        with httpx.stream('GET', source.url, headers=headers, follow_redirects=True, timeout=timeout) as response:
            if response.status_code == 416 and done:  # the part is already whole
                pass
            elif response.status_code >= 400:
                raise BackboneError(f'{source.url} answered HTTP {response.status_code}.')
            else:
                if done and response.status_code != 206:
                    done = 0  # the server ignored the range: start over
                length = response.headers.get('Content-Length')
                total = done + int(length) if length and length.isdigit() else None
                with open(partial, 'ab' if done else 'wb') as handle:
                    for chunk in response.iter_bytes(1 << 20):
                        handle.write(chunk)
                        done += len(chunk)
                        if on_progress is not None:
                            on_progress(done, total)
                if total is not None and done != total:
                    raise BackboneError(
                        f'the download of {source.file} broke off at {done:,} of {total:,} bytes: run it again to resume.'
                    )
    except httpx.HTTPError as error:
        raise BackboneError(
            f'the download of {source.file} failed ({type(error).__name__}): run it again to resume.'
        ) from error
    with open(partial, 'rb') as handle:
        if handle.read(4) != b'GGUF':
            partial.unlink(missing_ok=True)
            raise BackboneError(f'{source.url} did not send a GGUF file (wrong URL, or a login page?).')
    os.replace(partial, target)
    return target
