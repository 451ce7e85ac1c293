"""Capacity leases on the edge: requests on routes with limits admitted here, from capacity the router leased.

A route is (provider, logical model, the caller's key id where that key has limits, else None: every key
without limits shares the route's leases, and its requests count in its own windows when their usage
events settle, ``llmgw_usage.domain.key_amounts``). For each, the edge holds the leases the router
granted it (``llmgw_common.capacity``): N requests with N x a per-request estimate reserved in every window
they draw on. A request is admitted from a live lease when its own estimate (tokens in, tokens out and cost,
each computed as the router computes them) still fits in what the lease has left, field by field: so what
the edge admits from a lease never passes what the router reserved, and the router's invariant (consumed +
reserved by live leases <= limit) holds for every window. The request then carries a ``Reservation`` naming
the lease; its usage event settles its actual usage (the usage service), as for a per-request admission.

- A request that finds no lease with room asks for one (one question per route in flight: the others wait
  for its answer); a lease more than two thirds through its life or its requests is replaced ahead of
  time, off the request's path, unless the router granted less than asked (little is left: a lease nobody
  uses would hold capacity another edge is refused for). The size asked for follows the route's demand
  (requests per lease period, averaged over time) plus the requests waiting; the router answers with one
  request when little is left.
- A lease is given back (what was not admitted returns at once) when it is used up, when it ends (the
  sweep), and at shutdown; one granted too late in its window bucket to serve at once too, and the next one
  is asked for when the bucket has turned. After a lease that its bucket ended, the next one is asked for
  once that bucket has turned (not reserved and given back for nothing just before), and not ahead of time
  (it would end with the one it replaces). An attempt that failed is taken back into its lease while the
  edge still holds it (the failed request used nothing); once given back, its estimate stays counted until
  the router's reaper returns what no usage event settled.
- A lease refused (a limit full, a cooldown, a breaker) leaves the request to the router's own admission,
  and the route's requests to it for ``REFUSED_S``: a full limit reads exactly as per request (the reason
  with its counts and wait, Retry-After, the failover in the router's order, the 429 when nobody is left).
- When the router cannot be asked, live leases keep serving until they end; a route with no lease left is
  refused (``Refusal.unavailable``: a 503 with Retry-After), never admitted past a limit.

No NATS here: ``ask`` and ``give_back`` are injected (the edge's ``lease_client``); tests drive this with
fakes and a clock.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import msgspec

from llmgw_common.capacity import MAX_RETURNS, LeaseAsk, LeaseGrant, LeaseReturn, LeaseUse
from llmgw_common.ids import new_id
from llmgw_common.messages import Reservation

RouteKey = tuple[str, str, str | None]  # provider, logical model, the caller's key id if it has limits

# a lease stops admitting this long before its end: the edge's and the router's clocks (NTP keeps them within
# milliseconds). Every bucket's turn is a pause this long plus BUCKET_TURN_S and a round trip, for every
# request on the route: at 0.1 + 0.02 s it was 2.4 % of the time of a minute window's 5 s buckets
END_MARGIN_S = 0.03
BUCKET_TURN_S = 0.01  # a lease that ends before it could serve: asked again this long after its end
RENEW_AT = 2 / 3  # of a lease's life or requests: the next one is asked for, off the request's path
MAX_WANTED = 10_000
MAX_ROUNDS = 3  # questions one request waits for before it leaves the decision to the router
MAX_ESTIMATE = 10**9  # tokens: what a LeaseAsk carries at most
BUCKET_CUT_S = 0.2  # a lease ending this much before its ttl would: its window bucket ended it
USE_BURST = 20.0  # reports of lease use sent at once, then USE_RATE a second (their views' lag under load)
USE_RATE = 10.0
RETURN_CARRY_S = 1.0  # a lease given back this recently rides on the route's next question
REFUSED_S = 0.5  # after a lease was refused for a full limit: the router admits the route's requests this long
AWAY_S = 1.0  # after the router could not be asked: a route with no lease left is refused at once this long


class RouterUnavailable(Exception):
    """The router could not be asked (no answer in time, no responders, NATS away, its Redis away)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    unavailable: bool = False  # the router could not be asked: a 503
    ask_router: bool = False  # the lease way does not fit this request (a full limit too): the router decides
    retry_after_s: float = 1.0


@dataclass(slots=True)
class _Lease:
    grant: LeaseGrant
    until: float  # epoch s when it stops admitting
    started: float
    admitted: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_nano: int = 0
    returned: bool = False
    reports: int = 0  # LeaseUse reports sent: their seq

    def take(self, tokens_in: int, tokens_out: int, cost_nano: int) -> bool:
        g = self.grant
        if (self.admitted >= g.n or self.tokens_in + tokens_in > g.n * g.tokens_in
                or self.tokens_out + tokens_out > g.n * g.tokens_out or self.cost_nano + cost_nano > g.n * g.cost_nano):
            return False
        self.admitted += 1
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out
        self.cost_nano += cost_nano
        return True

    def due_for_renewal(self, now: float) -> bool:
        life = self.until - self.started
        return now >= self.started + life * RENEW_AT or self.admitted >= self.grant.n * RENEW_AT

    def use(self) -> LeaseUse:
        self.reports += 1
        return LeaseUse(lease_id=self.grant.lease_id, seq=self.reports, admitted=self.admitted,
                        tokens_in=self.tokens_in, tokens_out=self.tokens_out, cost_nano=self.cost_nano)

    def back(self) -> LeaseReturn:
        return LeaseReturn(lease_id=self.grant.lease_id, admitted=self.admitted, tokens_in=self.tokens_in,
                           tokens_out=self.tokens_out, cost_nano=self.cost_nano)


@dataclass(slots=True)
class _Route:
    leases: list[_Lease] = field(default_factory=list)
    asking: asyncio.Future | None = None  # the question in flight: LeaseGrant, or RouterUnavailable
    waiting: int = 0
    admitted: int = 0  # since the last question: the demand
    since: float = 0.0
    rate: float = 0.0  # requests per second, a moving average over about a lease period
    # the router granted less than asked: little is left of a limit. No lease is asked for ahead of time
    # then: one nobody uses would hold capacity another edge's request is refused for
    scarce: bool = False
    # the end of the window bucket that ended the last lease early: a lease asked for from shortly before it
    # until it has turned would end at once (reserved and given back for nothing), so it is asked for then
    turn_at: float = 0.0
    # a lease was refused for a full limit: until then the route's requests go to the router one by one
    refused_until: float = 0.0
    # what the leases were asked for under (the config, the caller's key record): when either changes (a
    # reload, a key's new limits) they go back, so new limits apply from the next request, as per request
    basis: tuple[object, ...] = ()
    # given back a moment ago (RETURN_CARRY_S): the next question carries them, so the router has what they
    # did not use back before it grants (their own give-backs may reach it after the question)
    returned: list[tuple[float, LeaseReturn]] = field(default_factory=list)


class CapacityCache:
    def __init__(self, edge: str, ask: Callable[[LeaseAsk], Awaitable[LeaseGrant]],
                 give_back: Callable[[LeaseReturn], None], ttl_s: Callable[[], float],
                 clock: Callable[[], float] = time.time,
                 report_use: Callable[[list[LeaseUse]], None] | None = None):
        self.edge = edge
        self._ask = ask
        self._give_back = give_back
        self._ttl_s = ttl_s
        self._clock = clock
        self._routes: dict[RouteKey, _Route] = {}
        self._held: dict[str, _Lease] = {}  # lease id -> lease, until given back
        self._tasks: set[asyncio.Task] = set()
        self.router_lost = False  # the last question found no router: serving from leases (health says so)
        # what was admitted from live leases goes to the routers (_note_use: at once, batched under load), for
        # the windows' views (they show what was admitted, as per request, not a lease's unused part)
        self._report_use = report_use
        self._used: dict[str, _Lease] = {}
        self._use_tokens, self._use_at = USE_BURST, 0.0  # reports sent at once (a token bucket)
        self._away_until = 0.0

    async def take(self, route: RouteKey, tokens_in: int, tokens_out: int,
                   basis: tuple[object, ...] = ()) -> Reservation | Refusal:
        """A reservation from a lease of ``route`` for a request of this estimate, or why there is none.
        ``basis``: what the limits come from (the config, the caller's key record), compared by identity: a
        change gives the route's leases back first (granted under the old limits)."""
        if tokens_in > MAX_ESTIMATE or tokens_out > MAX_ESTIMATE:  # no lease is sized for it: the router judges
            return Refusal("an estimate no lease is sized for", ask_router=True)
        r = self._routes.get(route)
        if r is None:
            r = self._routes[route] = _Route(since=self._clock(), basis=basis)
        elif len(r.basis) != len(basis) or any(a is not b for a, b in zip(r.basis, basis)):
            for lease in list(r.leases):
                self._retire(r, lease)
            r.basis, r.refused_until, r.scarce = basis, 0.0, False
        for round_ in range(MAX_ROUNDS + 1):
            reservation = self._from_leases(route, r, tokens_in, tokens_out)
            if reservation is not None:
                return reservation
            if self._clock() < r.refused_until:  # a lease was refused a moment ago: a limit is full
                return Refusal("a limit of this route is full", ask_router=True)
            if round_ == MAX_ROUNDS:  # a lease this request waited for went to others each time
                break
            if self._clock() < self._away_until:  # asked a moment ago and found nobody: not again yet
                return Refusal(f"the router cannot be reached and no capacity lease of {route[0]} is left",
                               unavailable=True)
            if r.asking is None:
                self._start_asking(route, r, tokens_in, tokens_out)
            assert r.asking is not None
            r.waiting += 1
            try:
                outcome = await asyncio.shield(r.asking)
            finally:
                r.waiting -= 1
            if isinstance(outcome, RouterUnavailable):
                return Refusal(f"the router cannot be reached and no capacity lease of {route[0]} is left",
                               unavailable=True)
            if outcome.n == 0:
                # a limit reached, cooling, a breaker, no lease for it: the router admits this request itself,
                # so a full limit reads as it always did (its reason with the counts and the wait, Retry-After,
                # a failover to the next provider in the router's order, the 429 when none is left). For a
                # moment the route's requests go straight to the router (the lease way was just refused).
                if outcome.reason.endswith("reached"):
                    r.refused_until = self._clock() + REFUSED_S
                return Refusal(outcome.reason, ask_router=True)
        return Refusal("capacity leases are taken faster than granted", ask_router=True)

    def release(self, reservation: Reservation) -> bool:
        """A failed attempt: its request used nothing. Taken back into its lease while the edge holds it."""
        lease = self._held.get(reservation.lease or "")
        if lease is None or lease.returned or lease.admitted == 0:
            return False
        lease.admitted -= 1
        lease.tokens_in -= reservation.tokens_in
        lease.tokens_out -= reservation.tokens_out
        lease.cost_nano -= reservation.cost_nano
        self._note_use(lease)
        return True

    def sweep(self) -> None:
        """Leases that ended go back; routes idle for a while are forgotten."""
        now = self._clock()
        for route, r in list(self._routes.items()):
            for lease in [x for x in r.leases if now >= x.until]:
                self._retire(r, lease)
            if not r.leases and r.asking is None and now - r.since > 10 * self._ttl_s():
                del self._routes[route]

    async def close(self) -> None:
        """At shutdown: every lease held goes back (the client sends what it can before NATS closes)."""
        for task in list(self._tasks):
            task.cancel()
        for r in self._routes.values():
            for lease in list(r.leases):
                self._retire(r, lease)

    @property
    def live_leases(self) -> int:
        now = self._clock()
        return sum(1 for lease in self._held.values() if now < lease.until)

    # ---- inside -------------------------------------------------------------------------------------

    def _from_leases(self, route: RouteKey, r: _Route, tokens_in: int, tokens_out: int) -> Reservation | None:
        now = self._clock()
        for lease in r.leases:
            if now >= lease.until:
                continue
            g = lease.grant
            cost = g.cost_of(tokens_in, tokens_out)
            if not lease.take(tokens_in, tokens_out, cost):
                continue
            r.admitted += 1
            self._note_use(lease)
            if lease.admitted >= g.n:  # used up: what it reserved beyond these estimates goes back now
                self._retire(r, lease)
            elif (r.asking is None and not r.scarce and lease.due_for_renewal(now) and len(r.leases) == 1
                  and g.until_ms / 1000 != r.turn_at):  # its successor would end with it: asked at the turn
                self._start_asking(route, r, tokens_in, tokens_out)
            return Reservation(provider=route[0], model=route[1], at_s=g.at_s, tokens_in=tokens_in,
                               tokens_out=tokens_out, cost_nano=cost, key_id=g.key_id, lease=g.lease_id)
        return None

    def _wanted(self, r: _Route) -> int:
        now = self._clock()
        ttl = self._ttl_s()
        elapsed = max(now - r.since, 0.0)
        # requests per second, averaged over time (about one lease period), not over questions: two requests
        # a few ms apart each asking (a lease of one used up) must not read as hundreds a second, or the
        # router, seeing that demand against what is left, would answer every question with one request
        keep = math.exp(-elapsed / ttl)
        fresh = r.admitted / ttl if elapsed < 1e-9 else (1 - keep) * r.admitted / elapsed
        r.rate = keep * r.rate + fresh
        r.admitted, r.since = 0, now
        return max(1, min(MAX_WANTED, math.ceil(r.rate * ttl) + r.waiting + 1))

    def _start_asking(self, route: RouteKey, r: _Route, tokens_in: int, tokens_out: int) -> None:
        now = self._clock()
        for lease in [x for x in r.leases if now >= x.until]:  # ended, not swept yet: back with this question
            self._retire(r, lease)
        returns = [back for at, back in r.returned if now - at < RETURN_CARRY_S][-MAX_RETURNS:]
        r.returned.clear()
        ask = LeaseAsk(lease_id=new_id(), edge=self.edge, provider=route[0], model=route[1], key_id=route[2],
                       wanted=self._wanted(r), tokens_in=tokens_in, tokens_out=tokens_out, returns=returns)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        r.asking = future
        turning = r.turn_at - END_MARGIN_S <= now < r.turn_at + BUCKET_TURN_S
        delay = r.turn_at + BUCKET_TURN_S - now if turning else 0.0
        task = asyncio.get_running_loop().create_task(self._asked(r, ask, future, delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _asked(self, r: _Route, ask: LeaseAsk, future: asyncio.Future, delay: float) -> None:
        try:
            if delay > 0:  # the bucket that ended the last lease has not turned yet
                await asyncio.sleep(delay)
            grant = await self._ask(ask)
            grant = await self._past_its_bucket(ask, grant)
        except RouterUnavailable as exc:
            self.router_lost = True
            self._away_until = self._clock() + AWAY_S
            future.set_result(exc)
            return
        except BaseException as exc:  # cancelled at shutdown, or a bug: the waiters are told "unavailable"
            future.set_result(RouterUnavailable(type(exc).__name__))
            raise
        finally:
            r.asking = None
        self.router_lost = False
        r.scarce = grant.n < ask.wanted
        if grant.n > 0:
            now = self._clock()
            ends = grant.until_ms / 1000
            if ends < now + self._ttl_s() - BUCKET_CUT_S:
                r.turn_at = ends
            lease = _Lease(grant, until=ends - END_MARGIN_S, started=now)
            r.leases.append(lease)
            self._held[grant.lease_id] = lease
        future.set_result(grant)

    async def _past_its_bucket(self, ask: LeaseAsk, grant: LeaseGrant) -> LeaseGrant:
        """A lease ends with the shortest window bucket it draws on; granted in that bucket's last moments it
        ends before the edge could admit from it. Rather than ask again and again for leases that each end at
        once (each one reserved, given back, and the waiting requests left to the router one by one, at
        every bucket's turn), it goes back unused and the next one is asked for once the bucket has turned."""
        for _ in range(2):  # a router whose clock is behind ours may still be in the old bucket once
            ends_in = grant.until_ms / 1000 - self._clock()
            if grant.n == 0 or ends_in > END_MARGIN_S:
                return grant
            back = LeaseReturn(lease_id=grant.lease_id)
            self._give_back(back)
            await asyncio.sleep(max(ends_in, 0.0) + BUCKET_TURN_S)
            ask = msgspec.structs.replace(ask, lease_id=new_id(), returns=[back])
            grant = await self._ask(ask)
        return grant

    def _note_use(self, lease: _Lease) -> None:
        """What a lease admitted goes to the routers at the end of this event-loop turn while reports are
        few (a client's requests one after another: the views show each at once, as per request); under
        load at most ``USE_RATE`` reports a second, each carrying every lease used since (one report per
        turn was one NATS message and one Redis script per request at concurrency 1)."""
        if self._report_use is None:
            return
        first = not self._used
        self._used[lease.grant.lease_id] = lease
        if not first:  # a report is already due: this use goes with it
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._use_tokens = min(USE_BURST, self._use_tokens + (now - self._use_at) * USE_RATE) - 1
        self._use_at = now
        if self._use_tokens >= 0:
            loop.call_soon(self._send_uses)
        else:  # the burst is spent: this report waits for its turn
            loop.call_later(-self._use_tokens / USE_RATE, self._send_uses)

    def _send_uses(self) -> None:
        """What each lease used since the last report has admitted in all (one used up or ended went back
        with its give-back, which says the same)."""
        uses = [lease.use() for lease in self._used.values() if not lease.returned]
        self._used.clear()
        if uses and self._report_use is not None:
            self._report_use(uses)

    def _retire(self, r: _Route, lease: _Lease) -> None:
        if lease in r.leases:
            r.leases.remove(lease)
        if lease.returned:
            return
        lease.returned = True
        self._held.pop(lease.grant.lease_id, None)
        back = lease.back()
        self._give_back(back)
        now = self._clock()
        r.returned = [(at, b) for at, b in r.returned if now - at < RETURN_CARRY_S][-MAX_RETURNS + 1:]
        r.returned.append((now, back))
