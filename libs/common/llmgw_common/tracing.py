"""OpenTelemetry traces: off unless the standard ``OTEL_*`` variables ask for them (docs/observability.md).

``setup(service)`` (each service's ``run()``) turns tracing on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, or ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``,
``console``; ``none`` keeps it off); ``OTEL_SDK_DISABLED=true`` wins over both. Spans go out over OTLP/HTTP
(protobuf) through a batch processor; the exporter, sampler and batch settings read their usual
``OTEL_EXPORTER_OTLP_*``, ``OTEL_TRACES_SAMPLER*``, ``OTEL_BSP_*`` variables. The service name is
``OTEL_SERVICE_NAME``, else ``llmgw-<service>``.

Off costs nothing on the hot paths: every helper here first reads the module flag ``enabled`` and then
hands back what it was given (a coroutine unchanged, one shared ``nullcontext``), no span, no context.

The provider is this module's own, never the global one: FastAPI instruments itself whenever a global
tracer provider exists, and the edge and ui-api make their server spans here (``metrics.HttpMetrics``), so
a global one would double them. Tests swap providers with ``use_provider`` (an in-memory exporter).

Propagation: W3C ``traceparent`` (through the configured propagators, ``OTEL_PROPAGATORS``) in NATS headers
(``nats_conn.request`` injects, the router's decide handler extracts) and in the usage events' JetStream
headers (the edge's usage publisher injects, the usage consumer extracts).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Awaitable, Iterator, Mapping, TypeVar

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVER, CLIENT, INTERNAL, PRODUCER, CONSUMER = (SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL,
                                                 SpanKind.PRODUCER, SpanKind.CONSUMER)

enabled = False  # read by every hot path before anything else
_provider: Any = None  # an opentelemetry.sdk.trace.TracerProvider while enabled
_tracers: dict[str, Tracer] = {}
_NULL = contextlib.nullcontext()


def wanted(env: Mapping[str, str] | None = None) -> list[str]:
    """The exporters the environment asks for (empty: tracing stays off)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if named:
        return [e for e in named if e != "none"]
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return ["otlp"]
    return []


def service_name(service: str, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("OTEL_SERVICE_NAME") or f"llmgw-{service}"


def setup(service: str) -> bool:
    """Turn tracing on for this process when the environment asks for it; returns whether it is on."""
    exporters = wanted()
    if not exporters:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name(service),
                                                        "service.namespace": "llmgw"}))
    for name in exporters:
        if name == "otlp":
            protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            if protocol != "http/protobuf":
                log.warning("OTLP protocol %s is not installed; sending traces as http/protobuf", protocol)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored", name)
    use_provider(provider)
    log.info("tracing on: service %s, exporters %s", service_name(service), ", ".join(exporters))
    return True


def use_provider(provider: Any) -> None:
    """Trace with ``provider`` (None: tracing off). Tests pass one with an in-memory exporter."""
    global enabled, _provider
    _provider = provider
    _tracers.clear()
    enabled = provider is not None


def tracer(scope: str) -> Tracer:
    """The tracer of an instrumentation scope (``llmgw.edge``, ``llmgw.router``, ``llmgw.usage``, ...)."""
    t = _tracers.get(scope)
    if t is None:
        t = _tracers[scope] = (_provider or trace.NoOpTracerProvider()).get_tracer(scope)
    return t


# ---- propagation ---------------------------------------------------------------------------------------


def inject(headers: dict[str, str] | None = None, context: Context | None = None) -> dict[str, str]:
    """``headers`` with the current (or ``context``'s) trace context added (``traceparent``)."""
    headers = {} if headers is None else headers
    propagate.inject(headers, context=context)
    return headers


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The trace context carried by message headers (None when there are none)."""
    if not headers:
        return None
    return propagate.extract(headers)


# ---- spans ---------------------------------------------------------------------------------------------


def span(scope: str, name: str, kind: SpanKind = SpanKind.INTERNAL, attributes: Mapping[str, Any] | None = None,
         context: Context | None = None, links: list[Link] | None = None):
    """A context manager: a current span while tracing is on, else one shared ``nullcontext``."""
    if not enabled:
        return _NULL
    return tracer(scope).start_as_current_span(name, context=context, kind=kind, attributes=attributes,
                                               links=links)


def traced(coro: Awaitable[T], scope: str, name: str, kind: SpanKind = SpanKind.INTERNAL,
           attributes: Mapping[str, Any] | None = None) -> Awaitable[T]:
    """``await traced(f(...), ...)``: ``f`` runs inside a span; with tracing off, ``coro`` itself."""
    if not enabled:
        return coro
    return _in_span(coro, scope, name, kind, attributes, None)


def serving(coro: Awaitable[T], scope: str, name: str, headers: Mapping[str, str] | None,
            attributes: Mapping[str, Any] | None = None) -> Awaitable[T]:
    """A NATS request handler's body as a SERVER span, child of the trace context in its headers."""
    if not enabled:
        return coro
    return _in_span(coro, scope, name, SpanKind.SERVER, attributes, extract(headers))


async def _in_span(coro, scope, name, kind, attributes, context):
    with tracer(scope).start_as_current_span(name, context=context, kind=kind, attributes=attributes):
        return await coro


def start(scope: str, name: str, kind: SpanKind = SpanKind.INTERNAL, attributes: Mapping[str, Any] | None = None,
          context: Context | None = None, links: list[Link] | None = None, start_time: int | None = None
          ) -> Span | None:
    """A span that is not made current (ended by ``end``); None with tracing off."""
    if not enabled:
        return None
    return tracer(scope).start_span(name, context=context, kind=kind, attributes=attributes, links=links,
                                    start_time=start_time)


def end(s: Span | None, error: str | None = None, attributes: Mapping[str, Any] | None = None,
        end_time: int | None = None) -> None:
    if s is None:
        return
    if attributes:
        s.set_attributes(attributes)
    if error is not None:
        s.set_status(Status(StatusCode.ERROR, error))
    s.end(end_time=end_time)


@contextlib.contextmanager
def using(s: Span | None) -> Iterator[None]:
    """Make ``s`` current for a block (nothing when None)."""
    if s is None:
        yield
        return
    with trace.use_span(s, end_on_exit=False):
        yield


def annotate(attributes: Mapping[str, Any]) -> None:
    """Attributes on the current span (nothing with tracing off)."""
    if enabled:
        current = trace.get_current_span()
        if current.is_recording():
            current.set_attributes(attributes)


def link_to(context: Context | None) -> Link | None:
    """A link to the span a context carries (None when it carries none)."""
    if context is None:
        return None
    sc = trace.get_current_span(context).get_span_context()
    return Link(sc) if sc.is_valid else None


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, when tracing is on and a span is current."""
    if not enabled:
        return None
    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return None
    return format(sc.trace_id, "032x"), format(sc.span_id, "016x")
