"""The output policy of a tainted turn: its answer links and embeds only addresses someone trusted.

Once untrusted content (a fetched page, search results, documents, a plugin's results) has entered a
turn, the model may have been told to put conversation data into a URL, and a chat frontend fetches
an image the moment it renders it. So from then on every URL in the answer stays live only if the
user named its host in their own messages of the session, the host is on `security.url_allowlist`,
or it is exactly a link a web search of the turn returned; any other becomes inert text
(`agent.core.links`). The model's response is rewritten as it comes back, so the answer, the
stored history and every front end show the same text; `run_turn` streams it with the same policy.
A typed answer's strings are rewritten one by one, so its JSON stays JSON.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from dataclasses import replace
from typing import Any, cast

from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, UserPromptPart

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


def neutralize_response(
    response: ModelResponse, policy: LinkPolicy, *, json_text: bool = False, output_tools: Collection[str] = ()
) -> None:
    """Make the untrusted URLs of `response`'s text inert, in place.

    Args:
        response: The model's response.
        policy: Which URLs stay live.
        json_text: The text is a typed answer's JSON (native or prompted output): rewrite its strings.
        output_tools: The output tools, whose calls carry a typed answer: rewrite their arguments' strings.
    """
    parts = list(response.parts)
    for index, part in enumerate(parts):
        if isinstance(part, TextPart):
            content = _neutralize_json(part.content, policy) if json_text else neutralize(part.content, policy)
            parts[index] = replace(part, content=content)
        elif isinstance(part, ToolCallPart) and part.tool_name in output_tools:
            args = part.args_as_dict(raise_if_invalid=False) if part.args else {}
            parts[index] = replace(part, args=_neutralize_strings(args, policy))
    response.parts = parts


def _neutralize_json(text: str, policy: LinkPolicy) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return neutralize(text, policy)  # not JSON: it fails validation whatever its links
    return json.dumps(_neutralize_strings(value, policy), ensure_ascii=False)


def _neutralize_strings(value: Any, policy: LinkPolicy) -> Any:
    if isinstance(value, str):
        return neutralize(value, policy)
    if isinstance(value, dict):
        return {key: _neutralize_strings(item, policy) for key, item in cast(dict[str, Any], value).items()}
    if isinstance(value, list):
        return [_neutralize_strings(item, policy) for item in cast(list[Any], value)]
    return value


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
