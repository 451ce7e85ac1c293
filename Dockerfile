# One image for every gateway service: the container runs `llmgw <service>` (edge, router, usage,
# pricing, ui-api, demo-provider; also keys, replay, events, config check ...), settings from the
# environment (docker-compose.yml). Built by `docker compose up --build` or
#   docker build -t llmgw:0.1.0 .
# The tag follows the project version in pyproject.toml.

# ---- web: the admin UI (Svelte + Vite), built into ui-api's package; nothing of node stays -------
FROM node:20.19.5-bookworm-slim AS web
WORKDIR /src/services/ui-api/web
COPY services/ui-api/web/package.json services/ui-api/web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY services/ui-api/web/ ./
RUN npm run build

# ---- build: the project and its runtime dependencies (no [test] extras) in one venv ----------
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/llmgw
WORKDIR /src
# only what the distribution is built from (.dockerignore keeps the rest out of the context)
COPY pyproject.toml ./
COPY libs ./libs
COPY services ./services
COPY --from=web /src/services/ui-api/llmgw_ui_api/static ./services/ui-api/llmgw_ui_api/static
# Every dependency ships manylinux wheels for CPython 3.11 (chdb, hiredis, msgspec, uvloop, ...):
# nothing is compiled, so no compiler is ever installed; pip itself stays behind in this stage.
# The imports at the end fail the build if any service module (or its package data) is missing.
RUN /opt/llmgw/bin/pip install . \
 && /opt/llmgw/bin/pip uninstall -y pip \
 && /opt/llmgw/bin/python -c 'import llmgw_edge.main, llmgw_router.main, llmgw_usage.main, llmgw_pricing.main, llmgw_ui_api.main, llmgw_demo_provider.main, llmgw_cli.main' \
 && /opt/llmgw/bin/llmgw --help >/dev/null

# ---- runtime ---------------------------------------------------------------------------------
FROM python:3.11.14-slim-bookworm

ENV PATH=/opt/llmgw/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LLMGW_CONFIG=/etc/llmgw/llmgw.yaml \
    LLMGW_STATE_DIR=/var/lib/llmgw

# a fixed, unprivileged uid/gid: volumes mounted at /etc/llmgw and /var/lib/llmgw are first
# filled from this image, owner included, so the services can write their state and config
RUN groupadd --system --gid 10001 llmgw \
 && useradd --system --uid 10001 --gid llmgw --home-dir /var/lib/llmgw --no-create-home \
            --shell /usr/sbin/nologin llmgw \
 && install -d -o llmgw -g llmgw -m 0755 /etc/llmgw \
 && install -d -o llmgw -g llmgw -m 0750 /var/lib/llmgw

COPY --from=build /opt/llmgw /opt/llmgw
# the starting config of the compose stack; the volume llmgw-config is seeded from it
COPY --chown=llmgw:llmgw deploy/llmgw.yaml /etc/llmgw/llmgw.yaml

USER llmgw
WORKDIR /var/lib/llmgw
# edge 8080, ui-api 8081, router / usage / pricing metrics 9100 (LLMGW_METRICS_PORT), demo 18090
EXPOSE 8080 8081 9100 18090
ENTRYPOINT ["llmgw"]
CMD ["--help"]
