"""``new_id``: ULIDs as python-ulid makes them (its parser reads them back), time-ordered, unique."""

from __future__ import annotations

import threading
import time

from ulid import ULID

from llmgw_common import ids
from llmgw_common.ids import new_id


def test_an_id_is_a_ulid_of_now():
    before = time.time_ns() // 1_000_000
    made = new_id()
    after = time.time_ns() // 1_000_000
    parsed = ULID.from_str(made)
    assert len(made) == 26 and str(parsed) == made
    assert before <= parsed.milliseconds <= after


def test_ids_made_together_are_unique_and_in_order():
    made = [new_id() for _ in range(20_000)]
    assert len(set(made)) == len(made) and made == sorted(made)
    # within one millisecond the random part counts up by one, as python-ulid's strict policy does
    same_ms = [(a, b) for a, b in zip(made, made[1:]) if a[:10] == b[:10]]
    assert same_ms
    for a, b in same_ms[:100]:
        assert int.from_bytes(ULID.from_str(b).bytes[6:], "big") - int.from_bytes(ULID.from_str(a).bytes[6:], "big") == 1


def test_a_used_up_millisecond_borrows_the_next(monkeypatch):
    now_ms = 1_765_000_000_000
    monkeypatch.setattr(ids.time, "time_ns", lambda: now_ms * 1_000_000)
    first = new_id()
    monkeypatch.setattr(ids, "_last_random", ids._RANDOM_MAX)
    second = new_id()
    assert second > first and ULID.from_str(second).milliseconds == now_ms + 1


def test_threads_never_make_the_same_id():
    made: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_id() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in made for i in out]
    assert len(set(every)) == len(every)
