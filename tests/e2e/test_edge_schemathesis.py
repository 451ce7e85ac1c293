"""schemathesis against the edge's OpenAPI document (its request-body schemas): valid and invalid bodies for
every operation, through the whole stack, and never a 5xx. Bounded: about a thousand requests, ~45 s."""

from __future__ import annotations

import os

import pytest

from fakes import FakeProvider
from stacks import running_stack

pytestmark = pytest.mark.integration

# per generation mode; LLMGW_FUZZ_EXAMPLES=500 for a deeper run by hand (make test keeps the default)
EXAMPLES_PER_OPERATION = int(os.environ.get("LLMGW_FUZZ_EXAMPLES", "50"))
# the passthrough operations are the upstream's API, not the edge's: a few examples show the edge's part
FEW = {"/{provider_id}/v1/{path}", "/{provider_id}/v1beta/{path}"}


@pytest.fixture(scope="module")
def stack(infra, tmp_path_factory):
    with FakeProvider(models=["m", "e"]) as upstream:
        config = f"""
version: 1
providers:
  - id: p
    base_url: {upstream.url}
    models: [{{name: m}}, {{name: e}}]
  - id: a
    type: anthropic
    base_url: {upstream.origin}
    models: [{{name: claude-m, upstream: m}}]
routing:
  retry: {{attempts: 0}}
usage:
  batch_wait_s: 0.2
"""
        env = dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url,
                   CLICKHOUSE_URL=infra.clickhouse_url)
        with running_stack(tmp_path_factory.mktemp("edge-fuzz"), config, env) as s:
            yield s


def test_no_input_makes_the_edge_answer_5xx(stack):
    pytest.importorskip("schemathesis")
    import hypothesis
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    base_url = f"http://127.0.0.1:{stack.edge_port}"
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    calls: list[int] = []
    for result in schema.get_all_operations():
        op = result.ok()
        examples = 3 if op.path in FEW else EXAMPLES_PER_OPERATION
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                                 phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                                 suppress_health_check=list(hypothesis.HealthCheck))
            @hypothesis.given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                response = case.call(base_url=base_url, timeout=30)
                calls.append(response.status_code)
                case.validate_response(response, checks=[not_a_server_error])

            try:
                run()
            except hypothesis.errors.Unsatisfiable:  # no invalid input exists for this operation
                assert mode is GenerationMode.NEGATIVE
            except Exception as exc:  # noqa: BLE001 - collected: every operation gets its turn
                failures.append(f"{op.method.upper()} {op.path} ({mode.value}): {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
    assert len(calls) >= 100 and any(c == 400 for c in calls)
