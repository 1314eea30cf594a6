"""OpenAI fine-tuning jobs: upload and submit, follow a job's events, register the tuned model as a backbone.

Talks to OpenAI (or `OPENAI_BASE_URL`) through the openai SDK: `files.create` then
`fine_tuning.jobs.create` to submit; `fine_tuning.jobs.retrieve` and `list_events` to follow. Each
submitted job is noted in `TANDEM_HOME/tune/jobs.json` with the backbone name it should get, so
`tandem tune status` without a job id follows the latest one, and registration can use that name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tandem.agent.core.config import BackboneConfig
from tandem.agent.core.errors import ConfigError, TandemError
from tandem.agent.core.files import write_atomically
from tandem.agent.tune.pricing import price_for
from tandem.agent.tune.registry import BACKBONE_NAME_PATTERN, Registration, register_backbone

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent

__all__ = [
    'TERMINAL_STATUSES',
    'JobLog',
    'JobRecord',
    'JobUpdate',
    'backbone_for_job',
    'custom_base_url',
    'follow_job',
    'openai_client',
    'register_tuned_model',
    'submit_job',
]

TERMINAL_STATUSES = frozenset({'succeeded', 'failed', 'cancelled'})
_OPENAI_HOST = 'api.openai.com'
_EVENT_PAGES = 10


class FineTuneError(TandemError):
    """The fine-tuning API refused a request, or a job failed."""


@dataclass(frozen=True)
class JobRecord:
    """A job submitted from this machine, as noted in `TANDEM_HOME/tune/jobs.json`."""

    job_id: str
    base_model: str
    training_file: str
    submitted_at: str
    suffix: str | None = None
    validation_file: str | None = None
    backbone: str | None = None
    """The backbone name the tuned model is registered under."""
    base_url: str | None = None
    """The API's base URL when it is not OpenAI's."""
    training_examples: int | None = None
    """How many examples (non-empty lines) the training file held."""
    training_path: str | None = None
    """The training file on this machine: `tune compare`'s few-shot arm reads its examples from it."""


class JobLog:
    """The jobs submitted from this machine, newest last, in `home/tune/jobs.json`."""

    def __init__(self, home: Path) -> None:
        self.path = home / 'tune' / 'jobs.json'

    def records(self) -> list[JobRecord]:
        """Every noted job, oldest first (an unreadable file reads as none)."""
        try:
            raw: Any = json.loads(self.path.read_text(encoding='utf-8'))
        except (OSError, ValueError):
            return []
        known = set(JobRecord.__dataclass_fields__)
        items = cast(list[Any], raw) if isinstance(raw, list) else []
        return [
            JobRecord(**{key: value for key, value in cast(dict[str, Any], item).items() if key in known})
            for item in items
            if isinstance(item, dict) and 'job_id' in item
        ]

    def find(self, job_id: str) -> JobRecord | None:
        """The noted job `job_id`, if any."""
        return next((record for record in reversed(self.records()) if record.job_id == job_id), None)

    def latest(self) -> JobRecord | None:
        """The job submitted last, if any."""
        records = self.records()
        return records[-1] if records else None

    def add(self, record: JobRecord) -> None:
        """Note a job (atomically: the file is replaced whole)."""
        records = [*self.records(), record]
        write_atomically(self.path, json.dumps([asdict(item) for item in records], indent=2))


def openai_client(*, timeout: float = 60.0) -> AsyncOpenAI:
    """An async OpenAI client from the environment (`OPENAI_API_KEY`, `OPENAI_BASE_URL`).

    Raises:
        TandemError: `OPENAI_API_KEY` is not set.
    """
    import openai

    if not os.environ.get('OPENAI_API_KEY'):
        raise TandemError('fine-tuning needs OPENAI_API_KEY: export it (a key of the project that should own the job).')
    return openai.AsyncOpenAI(max_retries=2, timeout=openai.Timeout(timeout, connect=10))


def custom_base_url(client: AsyncOpenAI) -> str | None:
    """The client's base URL, or `None` when it is OpenAI's own."""
    url = str(client.base_url).rstrip('/')
    return None if _OPENAI_HOST in url else url


@contextlib.asynccontextmanager
async def _api(action: str, client: AsyncOpenAI) -> AsyncGenerator[None]:
    """Turn the SDK's errors into one actionable line."""
    import openai

    where = str(client.base_url).rstrip('/')
    try:
        yield
    except openai.AuthenticationError as error:
        raise FineTuneError(f'{action}: {where} rejected the API key (HTTP 401): check OPENAI_API_KEY.') from error
    except openai.PermissionDeniedError as error:
        raise FineTuneError(f'{action}: not allowed (HTTP 403): {_message(error)}') from error
    except openai.NotFoundError as error:
        raise FineTuneError(f'{action}: not found (HTTP 404): {_message(error)}') from error
    except openai.RateLimitError as error:
        raise FineTuneError(f'{action}: rate-limited or out of quota (HTTP 429): {_message(error)}') from error
    except openai.APIStatusError as error:
        raise FineTuneError(f'{action}: HTTP {error.status_code}: {_message(error)}') from error
    except openai.APIConnectionError as error:
        raise FineTuneError(f'{action}: cannot reach {where}: check the network, or OPENAI_BASE_URL.') from error


def _message(error: Any) -> str:
    body: Any = getattr(error, 'body', None)
    if isinstance(body, dict):
        inner: Any = cast(dict[str, Any], body).get('error', body)
        if isinstance(inner, dict) and (text := cast(dict[str, Any], inner).get('message')):
            return str(text)
        if isinstance(message := cast(dict[str, Any], body).get('message'), str):
            return message
    return str(getattr(error, 'message', error))


async def submit_job(
    client: AsyncOpenAI,
    training: Path,
    *,
    base_model: str,
    log: JobLog,
    suffix: str | None = None,
    epochs: int | None = None,
    validation: Path | None = None,
    backbone: str | None = None,
    seed: int | None = None,
) -> tuple[FineTuningJob, JobRecord]:
    """Upload the file(s) and create a supervised fine-tuning job; note it in `log`.

    Raises:
        FineTuneError: An upload or the job creation was refused; the message says why.
        TandemError: A file cannot be read, or an argument is invalid.
    """
    if suffix is not None and not re.fullmatch(r'[A-Za-z0-9_-]{1,64}', suffix):
        raise TandemError(f'--suffix {suffix!r}: use 1-64 letters, digits, "-" or "_".')
    if epochs is not None and not 1 <= epochs <= 50:
        raise TandemError('--epochs must be between 1 and 50.')
    if backbone is not None and BACKBONE_NAME_PATTERN.fullmatch(backbone) is None:
        raise TandemError(f'--name {backbone!r}: use letters, digits, ".", "_", "@" or "-".')
    training_id, examples = await _upload(client, training)
    validation_id = (await _upload(client, validation))[0] if validation is not None else None
    arguments: dict[str, Any] = {'model': base_model, 'training_file': training_id}
    # In the job too, so `tune status` on another machine registers the tune with its size.
    metadata = {'tandem_examples': str(examples)}
    if validation_id:
        arguments['validation_file'] = validation_id
    if suffix:
        arguments['suffix'] = suffix
    if seed is not None:
        arguments['seed'] = seed
    if epochs is not None:
        arguments['method'] = {'type': 'supervised', 'supervised': {'hyperparameters': {'n_epochs': epochs}}}
    if backbone:
        metadata['tandem_backbone'] = backbone
    arguments['metadata'] = metadata
    async with _api(f'creating a fine-tuning job on {base_model}', client):
        job = await client.fine_tuning.jobs.create(**arguments)
    record = JobRecord(
        job_id=job.id,
        base_model=base_model,
        training_file=training_id,
        validation_file=validation_id,
        suffix=suffix,
        backbone=backbone,
        base_url=custom_base_url(client),
        submitted_at=datetime.now(UTC).isoformat(timespec='seconds'),
        training_examples=examples,
        training_path=await asyncio.to_thread(os.path.abspath, training),
    )
    log.add(record)
    return job, record


async def _upload(client: AsyncOpenAI, path: Path) -> tuple[str, int]:
    """Upload a JSONL file; its file id and how many examples (non-empty lines) it holds."""
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as error:
        raise TandemError(f'cannot read {path}: {error.strerror or error}.') from error
    async with _api(f'uploading {path.name}', client):
        uploaded = await client.files.create(file=(path.name, data, 'application/jsonl'), purpose='fine-tune')
    return uploaded.id, sum(1 for line in data.splitlines() if line.strip())


@dataclass
class JobUpdate:
    """One poll of a job: its state, and the events not seen before (oldest first)."""

    job: FineTuningJob
    new_events: list[FineTuningJobEvent] = field(default_factory=list['FineTuningJobEvent'])
    metrics: dict[str, Any] = field(default_factory=dict[str, Any])
    """The latest `metrics` event's data (step, train_loss, ...), if any so far."""

    @property
    def done(self) -> bool:
        """Whether the job has finished (succeeded, failed or cancelled)."""
        return self.job.status in TERMINAL_STATUSES


async def follow_job(
    client: AsyncOpenAI,
    job_id: str,
    *,
    on_update: Callable[[JobUpdate], Awaitable[None] | None],
    interval: float = 10.0,
    once: bool = False,
    timeout: float | None = None,
) -> FineTuningJob:
    """Poll `job_id` until it finishes (or once), calling `on_update` after each poll.

    Raises:
        FineTuneError: The job does not exist, or the API failed.
        TandemError: `timeout` seconds passed first (the job goes on; follow it again later).
    """
    seen: set[str] = set()
    metrics: dict[str, Any] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        async with _api(f'reading fine-tuning job {job_id}', client):
            job = await client.fine_tuning.jobs.retrieve(job_id)
            events = await _new_events(client, job_id, seen)
        for event in events:
            data: Any = event.data
            if event.type == 'metrics' and isinstance(data, dict):
                metrics = dict(cast(dict[str, Any], data))
        update = JobUpdate(job, events, metrics)
        outcome = on_update(update)
        if outcome is not None:
            await outcome
        if update.done or once:
            return job
        if deadline is not None and time.monotonic() >= deadline:
            raise TandemError(
                f'job {job_id} is still {job.status}; follow it again with `tandem tune status {job_id}`.'
            )
        await asyncio.sleep(interval)


async def _new_events(client: AsyncOpenAI, job_id: str, seen: set[str]) -> list[FineTuningJobEvent]:
    """Events not in `seen`, oldest first; pages back (newest first) until it meets a seen one."""
    fresh: list[FineTuningJobEvent] = []
    after: str | None = None
    for _ in range(_EVENT_PAGES):
        if after is None:
            page = await client.fine_tuning.jobs.list_events(job_id, limit=50)
        else:
            page = await client.fine_tuning.jobs.list_events(job_id, limit=50, after=after)
        met_seen = False
        for event in page.data:
            if event.id in seen:
                met_seen = True
                break
            fresh.append(event)
        if met_seen or not page.data or not page.has_more:
            break
        after = page.data[-1].id
    seen.update(event.id for event in fresh)
    fresh.sort(key=lambda event: event.created_at)
    return fresh


def backbone_for_job(
    job: FineTuningJob, record: JobRecord | None, *, base_url: str | None
) -> tuple[str, BackboneConfig]:
    """The backbone name and config a succeeded job's model is registered as.

    The name is the one given at submit (`--name`), else the job's suffix, else `ft-` and the
    model id's last part. The model is `openai:ft:...` on OpenAI, `openai-chat:ft:...` (with the
    base URL) anywhere else; prices come from the fine-tuning price table when it knows the base.

    Raises:
        FineTuneError: The job has no fine-tuned model (it has not succeeded).
    """
    tuned = job.fine_tuned_model
    if not tuned:
        raise FineTuneError(f'job {job.id} is {job.status} and has no fine-tuned model to register yet.')
    metadata = cast(dict[str, Any], job.metadata or {})
    name = (record.backbone if record else None) or metadata.get('tandem_backbone')
    if not name:
        parts = tuned.split(':')
        suffix = (record.suffix if record else None) or (parts[3] if len(parts) > 4 and parts[3] else None)
        name = suffix or f'ft-{parts[-1]}'
    name = re.sub(r'[^A-Za-z0-9._@-]', '-', str(name))[:64]
    price = price_for(job.model)
    examples = record.training_examples if record is not None else None
    if examples is None and str(metadata.get('tandem_examples', '')).isdigit():
        examples = int(metadata['tandem_examples'])
    config = BackboneConfig(
        model=f'openai-chat:{tuned}' if base_url else f'openai:{tuned}',
        base_url=base_url,
        kind='fine-tuned',
        base_model=job.model,
        input_price_per_mtok=price.input_per_mtok if price else None,
        output_price_per_mtok=price.output_per_mtok if price else None,
        training_cost_usd=round(job.trained_tokens * price.training_per_mtok / 1e6, 4)
        if price and job.trained_tokens
        else None,
        training_examples=examples or None,
        training_file=record.training_path if record is not None else None,
    )
    return name, config


def register_tuned_model(
    job: FineTuningJob,
    record: JobRecord | None,
    *,
    base_url: str | None,
    name: str | None = None,
    config_path: Path | None = None,
) -> Registration:
    """Register a succeeded job's model as a backbone (idempotent: a second call changes nothing).

    When the chosen name is taken by another backbone, the job id's tail is appended to it.

    Raises:
        FineTuneError: The job has not succeeded.
        ConfigError: The config file cannot be edited safely.
    """
    default_name, config = backbone_for_job(job, record, base_url=base_url)
    chosen = name or default_name
    comment = f'fine-tuned by OpenAI job {job.id} from {job.model}, registered by `tandem tune status`'
    try:
        return register_backbone(chosen, config, path=config_path, comment=comment)
    except ConfigError as error:
        if name is not None or 'already has a different backbone' not in str(error):
            raise
    fallback = f'{chosen}-{job.id.rsplit("-", 1)[-1][-8:]}'[:64]
    return register_backbone(fallback, config, path=config_path, comment=comment)
