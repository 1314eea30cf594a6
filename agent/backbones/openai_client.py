"""The openai SDK client Tandem's OpenAI backbones talk through: the SDK's own bounded retries, each logged.

The SDK retries rate limits (429), timeouts, conflicts and server errors (5xx), and lost connections,
with exponential backoff and jitter, honouring the server's `Retry-After` (or `retry-after-ms`) up to
a minute. Tandem only sets how many attempts a request gets, per backbone, and logs each retry as a
`model.retry` event, so an operator sees a struggling backbone before its users do.
"""

from __future__ import annotations

import anyio
import httpx2
from openai import AsyncOpenAI
from openai._models import FinalRequestOptions

from tandem.agent.core.log import get_logger

__all__ = ('RetryLoggingOpenAI',)

_log = get_logger('tandem.backbones')


class RetryLoggingOpenAI(AsyncOpenAI):
    """`AsyncOpenAI` that logs each retry it makes: which attempt, of how many, why, and how long it waits."""

    async def _sleep_for_retry(
        self, *, retries_taken: int, max_retries: int, options: FinalRequestOptions, response: httpx2.Response | None
    ) -> None:
        # The SDK's own wait (backoff, or the server's Retry-After), then the same sleep it would do.
        remaining = max_retries - retries_taken
        wait = self._calculate_retry_timeout(remaining, options, response.headers if response is not None else None)
        _log.warning(
            'model.retry',
            attempt=retries_taken + 2,
            attempts=max_retries + 1,
            status=response.status_code if response is not None else None,
            wait_s=round(wait, 3),
            path=options.url,
        )
        await anyio.sleep(wait)
