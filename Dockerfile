# One image for every gateway service: the container runs `llmgw <service>` (edge, router, usage,
# pricing, ui-api, demo-provider; also keys, replay, events, config check ...), settings from the
# environment (docker-compose.yml). Built by `docker compose up --build` or
#   docker build -t llmgw:0.1.0 .
# The tag follows the project version in pyproject.toml.
#
# Reproducible: base images by tag and digest (the multi-architecture index), and the Python
# dependencies from deploy/requirements-image.txt, every version pinned with its hashes, installed
# before the code is copied (a code change rebuilds one small layer). Regenerate the lock after a
# change of the dependencies in pyproject.toml (from a clean copy of the repository, Python 3.11):
#   pip-compile --generate-hashes --allow-unsafe --strip-extras --all-build-deps --no-emit-index-url \
#       --no-emit-find-links -o deploy/requirements-image.txt pyproject.toml
# It holds no extra: no chDB (with pandas and pyarrow), since the usage service of this image talks to
# a ClickHouse server (CLICKHOUSE_URL).

# ---- web: the admin UI (Svelte + Vite), built into ui-api's package; nothing of node stays -------
FROM node:20.19.5-bookworm-slim@sha256:9e70124bd00f47dd023e349cd587132ae61892acc0e47ed641416c3e18f401c3 AS web
WORKDIR /src/services/ui-api/web
COPY services/ui-api/web/package.json services/ui-api/web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY services/ui-api/web/ ./
RUN npm run build

# ---- build: the project and its locked runtime dependencies (no extras) in one venv ------------
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/llmgw
WORKDIR /src
# Every dependency ships manylinux wheels for CPython 3.11 (hiredis, msgspec, uvloop, ...): nothing
# is compiled, so no compiler is ever installed. Any file whose hash is not in the lock fails here.
COPY deploy/requirements-image.txt ./
RUN /opt/llmgw/bin/pip install --require-hashes --no-deps -r requirements-image.txt
# then only what the distribution is built from (.dockerignore keeps the rest out of the context),
# with the locked setuptools (no build isolation: nothing is fetched unpinned). `pip check` fails
# the build when the lock no longer satisfies pyproject.toml; pip and setuptools stay behind in this
# stage, and the imports at the end fail it if any service module (or its package data) is missing.
COPY pyproject.toml ./
COPY libs ./libs
COPY services ./services
COPY --from=web /src/services/ui-api/llmgw_ui_api/static ./services/ui-api/llmgw_ui_api/static
RUN /opt/llmgw/bin/pip install --no-deps --no-build-isolation . \
 && /opt/llmgw/bin/pip check \
 && /opt/llmgw/bin/pip uninstall -y pip setuptools \
 && /opt/llmgw/bin/python -c 'import llmgw_edge.main, llmgw_router.main, llmgw_usage.main, llmgw_pricing.main, llmgw_ui_api.main, llmgw_demo_provider.main, llmgw_cli.main' \
 && /opt/llmgw/bin/llmgw --help >/dev/null

# ---- runtime ---------------------------------------------------------------------------------
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

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
# edge 8080, ui-api 8081, every service's metrics and health 9100 (LLMGW_METRICS_PORT), demo 18090
EXPOSE 8080 8081 9100 18090
ENTRYPOINT ["llmgw"]
CMD ["--help"]
