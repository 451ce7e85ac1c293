"""Query times UTC cannot hold are a validation error (a 400 at ui-api), never an OverflowError in a query."""

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from llmgw_common.messages import UsageHistoryQuery, UsageRequestsQuery, UsageStatsQuery


@pytest.mark.parametrize("query", [UsageStatsQuery, UsageHistoryQuery, UsageRequestsQuery])
def test_a_time_utc_cannot_hold_is_invalid(query):
    with pytest.raises(ValidationError, match="a time UTC cannot hold"):
        query.model_validate({"since": "0001-01-01T00:01+01:00"})
    with pytest.raises(ValidationError, match="a time UTC cannot hold"):
        query.model_validate({"since": "2026-01-01T00:00Z", "until": "9999-12-31T23:59-01:00"})


@pytest.mark.parametrize("query", [UsageStatsQuery, UsageHistoryQuery, UsageRequestsQuery])
def test_times_arrive_in_utc(query):
    q = query.model_validate({"since": "2026-12-07T10:00+02:00", "until": "2026-12-07T09:00"})
    assert q.since == datetime(2026, 12, 7, 8, 0, tzinfo=timezone.utc)
    assert q.until == datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)
