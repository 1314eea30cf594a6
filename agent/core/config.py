"""Tandem's configuration: CLI flags, then `TANDEM_*` environment, then a TOML file, then defaults.

The TOML file is `$TANDEM_CONFIG`, else `./tandem.toml`, else `~/.config/tandem/config.toml`.
"""

from __future__ import annotations

import json
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tandem.agent.core.errors import ConfigError

_toml_file: ContextVar[Path | None] = ContextVar('_toml_file', default=None)


def _xdg_dir(env: str, fallback: str) -> Path:
    base = os.environ.get(env)
    return Path(base) if base else Path.home() / fallback


def default_home() -> Path:
    """The data directory when `TANDEM_HOME` is unset: `$XDG_DATA_HOME/tandem`."""
    return _xdg_dir('XDG_DATA_HOME', '.local/share') / 'tandem'


def config_file_path() -> Path | None:
    """The TOML file in force: `$TANDEM_CONFIG`, else `./tandem.toml`, else the user config, else none."""
    explicit = os.environ.get('TANDEM_CONFIG')
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(
                f'TANDEM_CONFIG points at {path}, which does not exist: create it or unset TANDEM_CONFIG.'
            )
        return path
    for candidate in (Path.cwd() / 'tandem.toml', _xdg_dir('XDG_CONFIG_HOME', '.config') / 'tandem' / 'config.toml'):
        if candidate.is_file():
            return candidate
    return None


class BackboneConfig(BaseModel):
    """One named backbone: a model, where it is served, and what it is."""

    model: str
    """A pydantic-ai model string, e.g. `openai:gpt-4.1-mini` or `openai-chat:qwen2.5` (with `base_url`)."""
    base_url: str | None = None
    """An OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio), e.g. `http://127.0.0.1:8000/v1`."""
    api_key_env: str | None = None
    """The environment variable holding the API key; `OPENAI_API_KEY` is used when unset."""
    kind: Literal['base', 'fine-tuned'] = 'base'
    base_model: str | None = None
    """What a fine-tune was trained from."""
    settings: dict[str, Any] = Field(default_factory=dict[str, Any])
    """Model settings such as `temperature` or `max_tokens`."""
    attempts: int = Field(default=3, ge=1, le=10)
    """Tries per model request, the first included: rate limits (429), server errors and lost connections are
    retried with the openai SDK's exponential backoff, honouring `Retry-After`; each retry is logged."""
    output_mode: Literal['tool', 'native', 'prompted'] | None = None
    """How typed answers are asked for: an output tool call, the server's JSON-schema `response_format`, or the
    schema in the instructions (any model). Unset: the model's usual mode, else `prompted`."""
    input_price_per_mtok: float | None = None
    """USD per million input tokens, for cost reports when pydantic-ai's price table lacks the model."""
    output_price_per_mtok: float | None = None
    training_cost_usd: float | None = None
    """What training this fine-tune cost: the decision report amortizes it into a break-even volume.
    `tandem tune status` sets it from the job's trained tokens."""
    training_examples: int | None = Field(default=None, ge=1)
    """How many examples trained this fine-tune: the decision report's data criterion, and its learning curve
    over tunes of one base model. `tandem tune status` sets it from the training file `tune submit` sent."""
    training_file: str | None = None
    """The training file this fine-tune was trained on, on this machine: `tandem tune compare` runs the
    base model with its examples in the prompt (the few-shot arm). `tandem tune status` records it."""


class LimitsConfig(BaseModel):
    """Per-turn usage limits, so a looping model cannot run up an unbounded bill."""

    requests: int = 16
    tool_calls: int = 24
    total_tokens: int = 200_000
    tool_timeout_seconds: float = 30.0
    tool_retries: int = 3
    """How often the model may retry a tool call that failed validation or asked for a retry."""
    output_retries: int = 2
    """How often the model may retry a typed answer that did not validate against its type or schema."""
    tool_argument_bytes: int = 65_536
    """Larger tool arguments are refused before validation, and the model is asked to send less."""


class ApprovalsConfig(BaseModel):
    """What happens to side-effect tool calls in a turn that untrusted content entered."""

    unattended: Literal['deny', 'allow'] = 'deny'
    """With nobody to ask (ask, HTTP, scenarios): deny such calls (the default), or let them run."""


def _comma_list(value: Any) -> Any:
    """A list setting from the environment: `a, b` (a JSON list works too)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith('['):
            return json.loads(text)
        return [part.strip() for part in text.split(',') if part.strip()]
    return value


class WebConfig(BaseModel):
    """The web tools."""

    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list[str])
    """Hosts `web_fetch` may reach although they are private (an intranet, say): `host` or `host:port`."""

    @field_validator('allowed_hosts', mode='before')
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _comma_list(value)


class SecurityConfig(BaseModel):
    """What an answer shaped by untrusted content may show."""

    output_urls: Literal['inert', 'allow'] = 'inert'
    """In a turn that untrusted content entered (web, documents, tool results): `inert` turns every URL in
    the answer into plain text unless the user named its host in the session or it is allowlisted; `allow`
    leaves them live."""
    url_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list[str])
    """Hosts whose URLs stay live anyway: `example.com` (any port), `example.com:8443`, or `*.example.com`."""

    @field_validator('url_allowlist', mode='before')
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator('url_allowlist', mode='after')
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not _ALLOWLIST_ENTRY.fullmatch(entry.strip().lower()):
                raise ValueError(
                    f'{entry!r} is not a host: write example.com, example.com:8443 or *.example.com, '
                    'with no scheme or path'
                )
        return [entry.strip().lower() for entry in value]


_ALLOWLIST_ENTRY = re.compile(r'(?:\*\.)?[a-z0-9\-]+(?:\.[a-z0-9\-]+)*(?::\d{1,5})?|\[[0-9a-f:.]+\](?::\d{1,5})?')


class KnowledgeConfig(BaseModel):
    """The knowledge base: ingestion and search."""

    default_kb: str = 'default'
    top_k: int = Field(default=5, ge=1, le=20)
    """Passages `search_knowledge` returns by default, and automatic retrieval puts in the prompt."""
    embeddings: str = 'none'
    """`none` (BM25 only), `local` (the bundled all-MiniLM-L6-v2; needs the `embeddings` extra),
    `local:/path/to/model`, or `openai:MODEL` (OpenAI, or any OpenAI-compatible server with `embeddings_base_url`)."""
    embeddings_base_url: str | None = None
    """An OpenAI-compatible `/v1` URL for `openai:MODEL` embeddings, e.g. `http://127.0.0.1:11434/v1`."""
    embeddings_api_key_env: str | None = None
    """The environment variable holding the embeddings API key; `OPENAI_API_KEY` when unset."""
    vector_search: Literal['auto', 'exact', 'redis'] = 'auto'
    """`auto`: the Redis Query Engine (FT.SEARCH KNN) when the server has it, else exact in process."""
    bm25_search: Literal['auto', 'process', 'redis'] = 'auto'
    """`auto`: the Redis Query Engine ranks by BM25 (FT.SEARCH over stemmed TEXT fields) when the server
    has it, else the in-process index."""
    rrf_k: int = Field(default=60, ge=1)
    """The reciprocal-rank-fusion constant of hybrid search."""
    chunk_tokens: int = Field(default=256, ge=32, le=8192)
    """Target chunk size in tokens (tiktoken cl100k_base)."""
    chunk_overlap: int = Field(default=32, ge=0)
    """Tokens each chunk repeats from the end of the previous one in the same section."""
    max_file_bytes: int = Field(default=50_000_000, gt=0)
    """Larger files are skipped, with the reason in the summary."""
    language: str = 'english'
    """The documents' language, for BM25's stop words and stemming (a Snowball language: `english`,
    `german`, `french`, …). Changing it re-indexes each document on its next ingest."""

    @field_validator('language')
    @classmethod
    def _known_language(cls, value: str) -> str:
        import Stemmer  # pyright: ignore[reportMissingTypeStubs]

        known = sorted(cast(list[str], Stemmer.algorithms()))  # pyright: ignore[reportUnknownMemberType]
        language = value.strip().lower()
        if language not in known:
            raise ValueError(f'knowledge.language {value!r} is not one of {", ".join(known)}')
        return language

    @model_validator(mode='after')
    def _overlap_fits(self) -> KnowledgeConfig:
        if self.chunk_overlap >= self.chunk_tokens // 2:
            raise ValueError('knowledge.chunk_overlap must be less than half of knowledge.chunk_tokens')
        return self


class ExamplesConfig(BaseModel):
    """Few-shot examples: worked conversations from an example set (`tandem examples`), shown before the history."""

    mode: Literal['off', 'fixed', 'retrieved'] = 'off'
    """`fixed`: the same examples every turn (`ids`, else the first ones added); `retrieved`: the examples
    whose questions are most like the current one, found by the knowledge base's retriever."""
    k: int = Field(default=3, ge=1, le=20)
    """Most examples per turn."""
    budget_tokens: int = Field(default=1_500, ge=1)
    """Most tokens of examples per turn: an example that does not fit is passed over for the next one."""
    set: str = 'default'
    """The example set: the tenant's of this name, and the user's own of this name."""
    tenant: str | None = None
    """Read the sets from this tenant instead of the turn's: one curated set for every tenant. Scenario
    runs, each in a tenant of its own, read the suite's tenant's."""
    ids: Annotated[list[str], NoDecode] = Field(default_factory=list[str])
    """With `fixed`: these examples, in this order (`tandem examples list` shows ids)."""
    search: Literal['auto', 'bm25', 'dense', 'hybrid'] = 'auto'
    """With `retrieved`: `auto` is hybrid when `knowledge.embeddings` is set, else BM25."""
    placement: Literal['messages', 'prompt'] = 'messages'
    """`messages`: turns before the history, tool calls in the backbone's API form, as a fine-tune sees
    them; `prompt`: a transcript in the prompt's `examples` slot, so fixed examples keep the system prompt
    one cacheable prefix."""

    @field_validator('ids', mode='before')
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _comma_list(value)


class MemoryConfig(BaseModel):
    """Long-term memory: facts about the user, recalled every turn, and history compaction."""

    enabled: bool = True
    extract: bool = False
    """After each turn, ask the backbone for durable facts about the user (off the latency path)."""
    generate_titles: bool = False
    """After a session's first turn, ask the backbone for a short title (off the latency path); else
    the first message, shortened, is the title."""
    recall_tokens: int = Field(default=600, ge=0)
    """Most tokens of facts put into the prompt's memory slot each turn; 0 leaves the slot empty."""
    fact_ttl_seconds: int | None = Field(default=None, gt=0)
    """Facts are forgotten this long after they were last stated; unset keeps them."""
    similarity_threshold: float = Field(default=0.9, gt=0, le=1)
    """A new fact this similar (0-1, character-level) to a known one updates it instead of being added."""
    max_facts: int = Field(default=10_000, gt=0)
    """The most facts one user may have."""
    compaction_tokens: int | None = Field(default=12_000, ge=200)
    """History over this many tokens is sent as a summary plus the recent turns; unset turns compaction off."""
    compaction_keep_tokens: int | None = Field(default=None, gt=0)
    """Tokens of recent turns kept verbatim when compacting; half of `compaction_tokens` when unset."""
    summary_tokens: int = Field(default=1_000, ge=50)
    """The longest the running summary of a compacted session may be."""
    history_cache_mb: float = Field(default=1.0, ge=0)
    """Recent sessions' stored history each process keeps in memory, all tenants together, so their next
    turn skips reloading it from Redis; 0 turns it off. Only sessions not yet compacted are held (a
    compacted one loads a bounded window instead), so with compaction on a little goes a long way."""

    @property
    def history_cache_bytes(self) -> int:
        """`history_cache_mb` in bytes."""
        return int(self.history_cache_mb * 1024 * 1024)

    @model_validator(mode='after')
    def _compaction_fits(self) -> MemoryConfig:
        if self.compaction_tokens is not None:
            keep = self.compaction_keep_tokens or self.compaction_tokens // 2
            if keep + self.summary_tokens > self.compaction_tokens:
                raise ValueError(
                    'compaction_keep_tokens (default: half of compaction_tokens) plus summary_tokens must not '
                    'exceed compaction_tokens'
                )
        return self


class McpServerConfig(BaseModel):
    """One MCP server whose tools the assistant gets: a local `command` (stdio) or a `url` (streamable HTTP).

    Values in `env` and `headers` may name environment variables as `${NAME}`, so a token stays in the
    environment rather than in tandem.toml; an unset one is an error that names it.
    """

    model_config = ConfigDict(extra='forbid')

    command: str | None = None
    """The program that serves MCP on its standard input and output, e.g. `uvx` or `npx`."""
    args: Annotated[list[str], NoDecode] = Field(default_factory=list[str])
    env: dict[str, str] = Field(default_factory=dict[str, str])
    """Variables the command gets on top of Tandem's own environment."""
    cwd: Path | None = None
    url: str | None = None
    """A streamable-HTTP endpoint, e.g. `https://mcp.example.com/mcp`."""
    headers: dict[str, str] = Field(default_factory=dict[str, str])
    """Sent with every request, e.g. `{Authorization = "Bearer ${GITHUB_TOKEN}"}`."""
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    """How long starting (or reaching) the server and its handshake may take."""

    @field_validator('args', mode='before')
    @classmethod
    def _split_args(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator('cwd', mode='after')
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode='after')
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError('an MCP server needs either `command` (stdio) or `url` (streamable HTTP), not both')
        if self.url is not None and not self.url.startswith(('http://', 'https://')):
            raise ValueError(f'`url` must be an http:// or https:// address, not {self.url!r}')
        if self.command is not None and self.headers:
            raise ValueError('`headers` apply to a `url` server; a `command` server takes `env`')
        if self.url is not None and (self.args or self.env or self.cwd is not None):
            raise ValueError('`args`, `env` and `cwd` apply to a `command` server; a `url` server takes `headers`')
        return self


MCP_SERVER_NAME = re.compile(r'[a-z][a-z0-9_-]{0,31}')
"""What `[mcp.NAME]` may be called: the name selects its tools as a tool plugin's does (`--tools NAME`)."""


class ApiKeyConfig(BaseModel):
    """One API key of the HTTP service (`tandem serve`), and the tenant it acts for."""

    tenant: str
    user: str | None = None
    """Binds the key to one user of its tenant: it acts for that user only, and a request that names
    another (`X-Tandem-User`, the `user` field or query) is refused with 403. Unset, the key acts for
    whichever user the request names: users within a tenant are then self-declared."""
    key: SecretStr | None = None
    """The key itself; prefer `sha256`, so the file does not hold it."""
    sha256: str | None = None
    """The key's SHA-256 hex digest (`printf %s KEY | sha256sum`)."""

    @model_validator(mode='after')
    def _one_form(self) -> ApiKeyConfig:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError('give an API key either as `key` or as `sha256`, not both or neither')
        if self.sha256 is not None and re.fullmatch(r'[0-9a-fA-F]{64}', self.sha256) is None:
            raise ValueError('`sha256` must be 64 hex digits')
        return self


def parse_api_keys(text: str) -> list[ApiKeyConfig]:
    """`"key1:tenant1,key2:tenant2/user"` (the `TANDEM_API_KEYS` form) as key configs.

    A key may contain `:` (the tenant is what follows the last one); `/USER` after the tenant binds the
    key to that user. Ids cannot contain `/`, so neither reading is ambiguous.
    """
    keys: list[ApiKeyConfig] = []
    for item in text.split(','):
        if not item.strip():
            continue
        key, sep, owner = item.strip().rpartition(':')
        tenant, slash, user = owner.partition('/')
        if not sep or not key or not tenant or (slash and not user):
            raise ValueError('API keys are written KEY:TENANT or KEY:TENANT/USER, separated by commas')
        keys.append(ApiKeyConfig(key=SecretStr(key), tenant=tenant, user=user or None))
    return keys


_FRONTEND_HEADERS = {'open-webui': ('X-OpenWebUI-User-Id', 'X-OpenWebUI-Chat-Id')}


class ServerConfig(BaseModel):
    """The HTTP service (`tandem serve`): keys, limits and CORS."""

    api_keys: Annotated[list[ApiKeyConfig], NoDecode] = Field(default_factory=list[ApiKeyConfig])
    """Bearer keys, their tenants and maybe users; `TANDEM_API_KEYS="key1:tenant1,key2:tenant2/user"` adds more."""
    rate_limit_requests: int = Field(default=120, ge=0)
    """Requests one key may make per window (a sliding window kept in Redis); 0 turns the limit off."""
    rate_limit_window_seconds: float = Field(default=60.0, gt=0)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    """Largest request body, except uploads."""
    max_upload_bytes: int = Field(default=20_971_520, gt=0)
    """Largest document upload (`POST /v1/knowledge`)."""
    max_message_chars: int = Field(default=100_000, gt=0)
    """Longest single chat message."""
    max_messages: int = Field(default=500, gt=0)
    """Most messages in one chat-completion request."""
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list[str])
    """Origins browsers may call the service from, e.g. `["https://chat.example.com"]`; `["*"]` allows any."""
    readiness_timeout_seconds: float = Field(default=2.0, gt=0)
    """How long `/readyz` waits for Redis and each backbone."""
    session_from_user_field: bool = False
    """Let a chat completion's `user` field name its session when no session header does. Off by default:
    clients that send `user` with every request would merge all of a user's chats into one session."""
    frontend: Literal['none', 'open-webui'] = 'none'
    """A chat frontend whose identity headers to read. `open-webui` takes the user from `X-OpenWebUI-User-Id`
    and the session from `X-OpenWebUI-Chat-Id` (Open WebUI sends them with ENABLE_FORWARD_USER_INFO_HEADERS=true),
    and runs its background tasks (titles, tags, follow-up suggestions) outside the chat's session."""
    user_header: str | None = None
    """A header naming the user, read after `X-Tandem-User` (e.g. a proxy's `X-Forwarded-User`); overrides the
    frontend's."""
    session_header: str | None = None
    """A header naming the session, read after `X-Tandem-Session`; overrides the frontend's."""

    @property
    def identity_headers(self) -> tuple[str | None, str | None]:
        """The configured (or the frontend's) user and session headers, besides Tandem's own."""
        user, session = _FRONTEND_HEADERS.get(self.frontend, (None, None))
        return self.user_header or user, self.session_header or session

    @field_validator('api_keys', mode='before')
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the environment: JSON, or KEY:TENANT,KEY:TENANT
            return json.loads(value) if value.lstrip().startswith('[') else parse_api_keys(value)
        return value

    @field_validator('cors_origins', mode='before')
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the environment: JSON, or comma-separated
            if value.lstrip().startswith('['):
                return json.loads(value)
            return [origin.strip() for origin in value.split(',') if origin.strip()]
        return value


class Settings(BaseSettings):
    """Every knob Tandem has. See the README's configuration reference."""

    model_config = SettingsConfigDict(
        env_prefix='TANDEM_',
        env_nested_delimiter='__',
        extra='forbid',
        validate_default=True,
    )

    home: Path = Field(default_factory=default_home)
    redis_url: SecretStr | None = None
    """`redis://`, `rediss://`, `unix://` or `redis+cluster://`; unset starts the embedded server in `home`."""
    backbone: str | None = None
    """The backbone name (or a model string) used when a command names none."""
    log_level: Literal['DEBUG', 'INFO', 'WARNING', 'ERROR'] = 'INFO'
    prompts_dir: Path | None = None
    """Extra prompt templates; they take precedence over the bundled ones with the same name."""
    prompt: str = 'assistant'
    """`NAME` or `NAME@VERSION`; the latest version when no version is given."""
    tenant: str = 'default'
    user: str = 'local'
    tools: list[str] | None = None
    """Toolsets to enable by name; unset enables every installed toolset."""
    session_ttl_seconds: int | None = None
    openai_model: str = 'gpt-4.1-mini'
    """The model used when only `OPENAI_API_KEY` is set."""
    backbones: dict[str, BackboneConfig] = Field(default_factory=dict[str, BackboneConfig])
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    retrieval: Literal['tool', 'auto', 'off'] = 'tool'
    """`tool`: the model calls `search_knowledge`; `auto`: top passages go into the prompt; `off`."""
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    examples: ExamplesConfig = Field(default_factory=ExamplesConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    mcp: dict[str, McpServerConfig] = Field(default_factory=dict[str, McpServerConfig])
    """MCP servers whose tools the assistant gets, by name: `[mcp.NAME]` in tandem.toml."""

    @field_validator('home', 'prompts_dir', mode='after')
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator('tools', mode='before')
    @classmethod
    def _split_tools(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(',') if part.strip()]
        return value

    @field_validator('mcp', mode='after')
    @classmethod
    def _mcp_names(cls, value: dict[str, McpServerConfig]) -> dict[str, McpServerConfig]:
        for name in value:
            if not MCP_SERVER_NAME.fullmatch(name):
                raise ValueError(
                    f'MCP server name {name!r}: use 1-32 lowercase letters, digits, "-" or "_", starting with a letter'
                )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _toml_file.get()
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, with secrets masked."""
        data = self.model_dump(mode='json')
        if self.redis_url is not None:
            data['redis_url'] = _mask_url(self.redis_url.get_secret_value())
        for server in data['mcp'].values():
            # A value that names its secret (`${TOKEN}`) shows as written; one that holds it does not.
            for table in ('env', 'headers'):
                server[table] = {key: _mask_literal(value) for key, value in server[table].items()}
        return data


def _mask_literal(value: str) -> str:
    return value if '${' in value else '***'


def _mask_url(url: str) -> str:
    """Hide a password in a URL such as `redis://:secret@host`."""
    scheme, sep, rest = url.partition('://')
    if not sep or '@' not in rest:
        return url
    credentials, _, host = rest.rpartition('@')
    user = credentials.split(':', 1)[0]
    return f'{scheme}://{user}:***@{host}'


def load_settings(**overrides: Any) -> Settings:
    """Load settings with `overrides` (CLI flags; `None` values are ignored) taking precedence.

    Raises:
        ConfigError: The file or environment holds an invalid value; the message names it.
    """
    path = config_file_path()
    token = _toml_file.set(path)
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        first = error.errors()[0]
        where = '.'.join(str(part) for part in first['loc'])
        origin = f' (from {path})' if path else ''
        raise ConfigError(f'invalid configuration{origin}: {where}: {first["msg"]}') from error
    except (OSError, ValueError) as error:
        if path is None or 'EnvSettingsSource' in str(error):
            field = re.search(r'field "([^"]+)"', str(error))
            name = f'TANDEM_{field.group(1).upper()}' if field else 'TANDEM'
            raise ConfigError(
                f'invalid value in the environment, in {name} or a {name}__* variable: {error}; '
                'lists are comma-separated, tables JSON'
            ) from error
        raise ConfigError(f'cannot read configuration file {path}: {error}') from error
    finally:
        _toml_file.reset(token)
