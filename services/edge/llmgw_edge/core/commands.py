"""Chat commands: a last user message starting with ``proxy-cli`` is answered by the gateway itself,
as a normal answer in the client's own format (streamed when asked), and never reaches a provider.

So the gateway can be driven from any chat UI: ``proxy-cli status``,
``models``, ``use X`` / ``use auto``, ``smart [on|off]``, ``logs N``, ``help``.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from llmgw_common import subjects
from llmgw_common.messages import Message, PinCommand, RouterState, RouterStateQuery, SmartCommand
from llmgw_common.nats_conn import RemoteError, request

from ..api.models import list_models

PREFIX = "proxy-cli"
HELP = """proxy-cli commands (answered by the gateway, never sent to a provider):
  proxy-cli status        providers: health, cooldowns, breakers, in flight, pin, smart routing
  proxy-cli models        models you can ask for (logical names, aliases, provider/model)
  proxy-cli use <id>      pin a provider as the default for every model it serves
  proxy-cli use auto      back to automatic routing
  proxy-cli smart [on|off]  smart routing by prompt class (no argument: toggle)
  proxy-cli logs [N]      the last N requests (default 10)
  proxy-cli help          this text"""


def parse_command(text: str) -> list[str] | None:
    """The command's words when the last user message is a ``proxy-cli`` command, else None."""
    text = text.strip()
    if not text.lower().startswith(PREFIX):
        return None
    rest = text[len(PREFIX):]
    if rest and not rest[0].isspace():
        return None  # "proxy-client..." is an ordinary prompt
    return rest.split() or ["help"]


async def _ask(nc, subject: str, msg: Message, reply_type, timeout: float = 3.0):
    try:
        return await request(nc, subject, msg, reply_type, timeout)
    except (NatsTimeoutError, NoRespondersError):
        raise CommandError("the service that answers this is not reachable right now") from None
    except RemoteError as exc:
        raise CommandError(str(exc)) from None


class CommandError(Exception):
    pass


def _format_state(state: RouterState) -> str:
    lines = [f"pinned provider: {state.pinned or 'none (automatic routing)'}",
             f"smart routing: {'on' if state.smart else 'off'}", "providers:"]
    for p in state.providers:
        flags = []
        if not p.enabled:
            flags.append("disabled")
        if p.free_tier:
            flags.append("free tier")
        if p.cooldown_s:
            flags.append(f"cooling down {p.cooldown_s}s")
        if p.breaker != "closed":
            flags.append(f"breaker {p.breaker}")
        minute = p.windows["minute"]
        limit = f"/{minute.requests_limit}" if minute.requests_limit is not None else ""
        latency = f"{p.latency_ms} ms avg" if p.latency_ms is not None else "latency n/a"
        lines.append(f"  {p.id}: {', '.join(flags) or 'healthy'}; {minute.requests}{limit} req in the last "
                     f"minute; {p.inflight} in flight; {latency}")
    return "\n".join(lines)


async def run_command(ctx, args: list[str], recent_requests: Callable[[int], Awaitable[str]]) -> str:
    name, rest = args[0].lower(), args[1:]
    if name == "help":
        return HELP
    if name == "models":
        ids = [m["id"] for m in list_models(ctx.config, 0)["data"]]
        return "models:\n" + "\n".join(f"  {i}" for i in ids)
    if name == "status":
        return _format_state(await _ask(ctx.nc, subjects.ROUTER_STATE, RouterStateQuery(), RouterState))
    if name == "use":
        if len(rest) != 1:
            return "usage: proxy-cli use <provider id> | auto"
        target = None if rest[0].lower() in ("auto", "none", "off") else rest[0]
        state = await _ask(ctx.nc, subjects.ROUTER_PIN, PinCommand(provider=target), RouterState)
        return f"pinned {state.pinned}: it is tried first for every model it serves" if state.pinned \
            else "automatic routing restored"
    if name == "smart":
        wanted = None if not rest else rest[0].lower() in ("on", "true", "1", "yes")
        state = await _ask(ctx.nc, subjects.ROUTER_SMART, SmartCommand(enabled=wanted), RouterState)
        return f"smart routing is {'on' if state.smart else 'off'}"
    if name == "logs":
        try:
            n = int(rest[0]) if rest else 10
        except ValueError:
            return "usage: proxy-cli logs [N]"
        return await recent_requests(max(1, min(n, 100)))
    return f"unknown command {name!r}\n\n{HELP}"


def command_runner(ctx, recent_requests: Callable[[int], Awaitable[str]]) -> Callable[[str], Awaitable[str | None]]:
    """The gateway's ``command`` hook: the answer to a ``proxy-cli`` message, or None for any other."""

    async def run(text: str) -> str | None:
        args = parse_command(text)
        if args is None:
            return None
        try:
            return await run_command(ctx, args, recent_requests)
        except CommandError as exc:
            return f"proxy-cli: {exc}"

    return run
