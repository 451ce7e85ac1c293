"""Attempt outcomes to the routers, fire and forget, off the response path.

Failures and the breaker's probes go at once (``llmgw.router.outcome``): cooldowns and breakers must learn
now. Successes wait up to ``OUTCOME_BATCH_S`` and go together (``llmgw.router.outcomes``): one message per
batch under load instead of one per request.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from llmgw_common import subjects
from llmgw_common.messages import AttemptOutcome, AttemptOutcomes

OUTCOME_BATCH_S = 0.05  # successes wait this long at most before they go to the routers, together
OUTCOME_BATCH_MAX = 500


def outcome_reporter(nc) -> Callable[[AttemptOutcome, bool], None]:
    """The gateway's ``report`` hook: ``report(outcome, may_batch)``, never blocking."""
    tasks: set[asyncio.Task] = set()
    batch: list[AttemptOutcome] = []

    async def publish(subject: str, data: bytes) -> None:
        try:
            await nc.publish(subject, data)
        except Exception:  # NATS away: health learning is best effort; reservations expire with their window
            pass

    def spawn(subject: str, data: bytes) -> None:
        # the loop keeps only a weak reference to a task: hold it until it is done
        task = asyncio.get_running_loop().create_task(publish(subject, data))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def flush() -> None:
        if batch:
            spawn(subjects.ROUTER_OUTCOMES, AttemptOutcomes(outcomes=batch[:]).encode())
            batch.clear()

    def report(outcome: AttemptOutcome, may_batch: bool = False) -> None:
        if not may_batch:
            spawn(subjects.ROUTER_OUTCOME, outcome.encode())
            return
        batch.append(outcome)
        if len(batch) >= OUTCOME_BATCH_MAX:
            flush()
        elif len(batch) == 1:
            asyncio.get_running_loop().call_later(OUTCOME_BATCH_S, flush)

    return report
