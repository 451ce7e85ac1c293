"""Chat commands: a last user message starting with ``proxy-cli`` is answered by the gateway itself,
as a normal answer in the client's own format (streamed when asked), and never reaches a provider.

So the gateway can be driven from any chat UI: ``proxy-cli status``,
``models``, ``use X`` / ``use auto``, ``smart [on|off]``, ``logs N``, ``help``.
A command given arguments it does not take (``smart maybe``, ``logs ten``,
``use`` of a provider that is not configured, one word too many) changes
nothing and answers with what was wrong and its usage line. The gateway core
calls this through its ``command`` hook (``Deps.command``).
"""

from __future__ import annotations

from typing import Awaitable, Callable

from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from llmgw_common import subjects
from llmgw_common.messages import Message, PinCommand, RouterState, RouterStateQuery, SmartCommand
from llmgw_common.nats_conn import RemoteError, request

from .api.models import list_models

PREFIX = "proxy-cli"
MAX_LOGS = 100
# each command's syntax (its usage line, the answer when it is given arguments it does not take) and what it does
USAGE = {
    "status": ("proxy-cli status", "providers: health, cooldowns, breakers, in flight, pin, smart routing"),
    "models": ("proxy-cli models", "models you can ask for (logical names, aliases, provider/model)"),
    "use": ("proxy-cli use <id> | auto", "pin a provider as the default for every model it serves, or back to "
                                         "automatic routing"),
    "smart": ("proxy-cli smart [on|off]", "smart routing by prompt class (no argument: toggle)"),
    "logs": ("proxy-cli logs [N]", f"the last N requests (1 to {MAX_LOGS}, default 10)"),
    "help": ("proxy-cli help", "this text"),
}
HELP = "proxy-cli commands (answered by the gateway, never sent to a provider):\n" + "\n".join(
    f"  {syntax:<27}{what}" for syntax, what in USAGE.values())
_SWITCH = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}
_AUTO = ("auto", "none", "off")


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
        raise CommandError("proxy-cli: the service that answers this is not reachable right now") from None
    except RemoteError as exc:
        raise CommandError(f"proxy-cli: {exc}") from None


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


def usage(name: str, problem: str) -> str:
    return f"proxy-cli {name}: {problem}\nusage: {USAGE[name][0]}"


def _check(name: str, rest: list[str], most: int) -> None:
    if len(rest) > most:
        extra = " ".join(rest[most:])
        raise CommandError(usage(name, f"unexpected argument{'s' if len(rest) - most > 1 else ''} `{extra}`"))


def _logs_count(rest: list[str]) -> int:
    _check("logs", rest, 1)
    if not rest:
        return 10
    try:
        n = int(rest[0])
    except ValueError:
        raise CommandError(usage("logs", f"N must be a whole number, not `{rest[0]}`")) from None
    if not 1 <= n <= MAX_LOGS:
        raise CommandError(usage("logs", f"N must be from 1 to {MAX_LOGS}, not {n}"))
    return n


def _smart_wanted(rest: list[str]) -> bool | None:
    _check("smart", rest, 1)
    if not rest:
        return None  # toggle
    wanted = _SWITCH.get(rest[0].lower())
    if wanted is None:
        raise CommandError(usage("smart", f"`{rest[0]}` is neither on nor off"))
    return wanted


def _pin_target(ctx, rest: list[str]) -> str | None:
    if not rest:
        raise CommandError(usage("use", "which provider?"))
    _check("use", rest, 1)
    if rest[0].lower() in _AUTO:
        return None
    if ctx.config.provider(rest[0]) is None:
        known = ", ".join(p.id for p in ctx.config.providers) or "none"
        raise CommandError(usage("use", f"unknown provider `{rest[0]}` (configured: {known})"))
    return rest[0]


async def run_command(ctx, args: list[str], recent_requests: Callable[[int], Awaitable[str]]) -> str:
    """The answer to one command; ``ctx``: the running edge (its ``config`` and NATS connection ``nc``).
    Raises ``CommandError`` (its text is the answer) for a command it cannot run."""
    name, rest = args[0].lower(), args[1:]
    if name not in USAGE:
        return f"unknown command {name!r}\n\n{HELP}"
    if name in ("help", "models", "status"):
        _check(name, rest, 0)
    if name == "help":
        return HELP
    if name == "models":
        ids = [m["id"] for m in list_models(ctx.config, 0)["data"]]
        return "models:\n" + "\n".join(f"  {i}" for i in ids)
    if name == "status":
        return _format_state(await _ask(ctx.nc, subjects.ROUTER_STATE, RouterStateQuery(), RouterState))
    if name == "use":
        target = _pin_target(ctx, rest)
        state = await _ask(ctx.nc, subjects.ROUTER_PIN, PinCommand(provider=target), RouterState)
        return f"pinned {state.pinned}: it is tried first for every model it serves" if state.pinned \
            else "automatic routing restored"
    if name == "smart":
        state = await _ask(ctx.nc, subjects.ROUTER_SMART, SmartCommand(enabled=_smart_wanted(rest)), RouterState)
        return f"smart routing is {'on' if state.smart else 'off'}"
    return await recent_requests(_logs_count(rest))  # logs


def command_runner(ctx, recent_requests: Callable[[int], Awaitable[str]]) -> Callable[[str], Awaitable[str | None]]:
    """The gateway's ``command`` hook: the answer to a ``proxy-cli`` message, or None for any other."""

    async def run(text: str) -> str | None:
        args = parse_command(text)
        if args is None:
            return None
        try:
            return await run_command(ctx, args, recent_requests)
        except CommandError as exc:
            return str(exc)

    return run
