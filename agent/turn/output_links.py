"""The output policy of a tainted turn: its answer links and embeds only addresses someone trusted.

Once untrusted content (a fetched page, search results, documents, a plugin's results) has entered a
turn, the model may have been told to put conversation data into a URL, and a chat frontend fetches
an image the moment it renders it. So from then on every URL in the answer stays live only if the
user named its host in their own messages of the session, the host is on `security.url_allowlist`,
or it is exactly a link a web search of the turn returned; any other becomes inert text
(`agent.core.links`). The model's response is rewritten as it comes back, so the answer, the
stored history and every front end show the same text; `run_turn` streams it with the same policy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart

from tandem.agent.core.links import LinkPolicy, neutralize
from tandem.agent.turn.deps import Deps

__all__ = ['link_policy', 'neutralize_response', 'user_texts']


def link_policy(deps: Deps, messages: Sequence[ModelMessage]) -> LinkPolicy | None:
    """The policy for the next answer of the turn, or `None` when its URLs may all stay live."""
    if not deps.turn.tainted or deps.settings.security.output_urls == 'allow':
        return None
    return LinkPolicy.from_sources(
        user_texts=user_texts(messages),
        allowlist=deps.settings.security.url_allowlist,
        link_urls=deps.turn.search_urls,
    )


def neutralize_response(response: ModelResponse, policy: LinkPolicy) -> None:
    """Make the untrusted URLs of `response`'s text inert, in place."""
    response.parts = [
        replace(part, content=neutralize(part.content, policy)) if isinstance(part, TextPart) else part
        for part in response.parts
    ]


def user_texts(messages: Sequence[ModelMessage]) -> Iterator[str]:
    """What the user wrote in `messages`: only their prompts, never tool results or instructions."""
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart):
                    if isinstance(part.content, str):
                        yield part.content
                    else:
                        yield from (item for item in part.content if isinstance(item, str))
