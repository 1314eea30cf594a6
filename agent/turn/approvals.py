"""The untrusted-content policy (OWASP LLM01/LLM06): side effects in a tainted turn need approval.

Web search, web fetch and document search return untrusted text and mark the turn tainted. From
then on, a call to a tool that declares side effects is held for approval (pydantic-ai's
approval-required toolsets): the REPL asks the person at the keyboard, showing the exact call;
non-interactive runs deny it unless `approvals.unattended = "allow"`. A denied call is reported
back to the model and logged.
"""

from __future__ import annotations

from typing import Any

from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults, RunContext, ToolDefinition, ToolDenied

from tandem.agent.core.log import get_logger
from tandem.agent.turn.deps import ApprovalRequest, Approver, Deps
from tandem.tools.registry import has_side_effects

__all__ = ['ApprovalRequest', 'Approver', 'needs_approval', 'resolve_approvals']

_log = get_logger('tandem.approvals')

DENIED_UNATTENDED = (
    'Denied: untrusted content (web or documents) entered this turn, so tools with side effects need a '
    "person's approval, and none is present. Do not retry; tell the user what you wanted to do."
)
DENIED_BY_USER = 'Denied by the user. Do not retry; ask the user what they want instead.'


def needs_approval(ctx: RunContext[Deps], tool_def: ToolDefinition, args: dict[str, Any]) -> bool:
    """Whether a call must be approved: a side-effect tool in a turn that untrusted content entered."""
    return ctx.deps.turn.tainted and has_side_effects(tool_def)


async def resolve_approvals(ctx: RunContext[Deps], requests: DeferredToolRequests) -> DeferredToolResults:
    """Decide every held call: ask the approver when there is one, else apply the unattended policy."""
    deps = ctx.deps
    results = DeferredToolResults()
    for call in requests.approvals:
        request = ApprovalRequest(call.tool_name, call.args_as_dict())
        if deps.approver is not None:
            approved = await deps.approver(request)
            reason = DENIED_BY_USER
        else:
            approved = deps.settings.approvals.unattended == 'allow'
            reason = DENIED_UNATTENDED
        _log.info('tool.approval', tool=call.tool_name, approved=approved, interactive=deps.approver is not None)
        results.approvals[call.tool_call_id] = True if approved else ToolDenied(reason)
        record = deps.turn.find_call(call.tool_call_id)
        if record is not None and not approved:
            record.result = 'denied'
    return results
