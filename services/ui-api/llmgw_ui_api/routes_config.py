"""The config editor's routes: read, validate, save and roll back the gateway's config (the config bucket).

- ``GET /api/config``: the current revision's text (comments, order and all) with its literal secrets
  masked, its ``etag`` and ``version`` (both the bucket's revision number) and the masked config as data.
- ``POST /api/config/validate``: ``{"yaml"}`` → the problems at their field paths and a unified diff
  against the current revision (secrets masked on both sides). No side effects.
- ``PUT /api/config``: ``{"yaml"}`` with ``If-Match: <etag>`` (428 without it, 409 when another revision
  was written meanwhile, 400 with ``problems`` when invalid: nothing changes). Written as a new revision
  of the bucket (a KV update expecting the If-Match revision: two editors cannot overwrite each other);
  every service follows the bucket and applies it live. ``llmgw.config.changed`` is announced as well.
- ``GET /api/config/history``, ``POST /api/config/rollback`` (``{"version"}`` + ``If-Match``): the
  kept revisions, newest first; a rollback writes that revision's text as a new revision.
- ``GET /api/config/replicas``: the config revision every process runs, and whether all run the latest.

The rooms: ``config_models`` (request and reply shapes), ``config_secrets`` (secrets masked in what is
shown, put back in what is saved), ``config_store`` (revisions, history, conflicts), and the problems
themselves from ``llmgw_common.config_check`` (what ``llmgw config check`` says too).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Header, HTTPException, Request
from starlette.responses import JSONResponse

from llmgw_common import config_bucket, subjects
from llmgw_common.config import masked, parse_config_text
from llmgw_common.messages import ConfigChanged, ConfigRevision

from .config_models import (ConfigText, ConfigView, HistoryReply, Problem, ProblemsResponse, ReplicaRevision,
                            ReplicasReply, RollbackBody, SaveReply, ValidateReply)
from .config_secrets import diff_text, mask_text
from .config_store import check, history, kept, parse_problems, read, save
from .errors import error_body

log = logging.getLogger("llmgw.ui-api")

router = APIRouter()


def _if_match_etags(value: str) -> list[str]:
    """The entity tags of an If-Match header (quoted or not, W/ ignored)."""
    out = []
    for part in value.split(","):
        tag = part.strip().removeprefix("W/").strip().strip('"').lower()
        if tag:
            out.append(tag)
    return out


STORE = f"{config_bucket.CONFIG_BUCKET}/{config_bucket.CONFIG_KEY}"  # where the config is, as ConfigView.path
REPLICAS_WAIT_S = 0.5  # how long GET /api/config/replicas collects answers


async def _kv(request: Request):
    """The config bucket (opened once per app)."""
    kv = getattr(request.app.state, "config_kv", None)
    if kv is None:
        kv = request.app.state.config_kv = await config_bucket.open_bucket(request.app.state.nc.jetstream())
    return kv


def _problems_response(message: str, problems: list[Problem]) -> JSONResponse:
    body = error_body(400, message, "invalid_config")
    body["problems"] = [p.model_dump() for p in problems]
    return JSONResponse(body, status_code=400)


def _require_if_match(if_match: str | None) -> list[str]:
    if if_match is None or not if_match.strip():
        raise HTTPException(428, "the header If-Match: <etag> is required (the etag GET /api/config gave): "
                                 "it keeps two editors from overwriting each other")
    return _if_match_etags(if_match)


async def _announce(request: Request, etag: str, version: str) -> bool:
    nc = request.app.state.nc
    try:
        await nc.publish(subjects.CONFIG_CHANGED, ConfigChanged(etag=etag, version=version).encode())
        await nc.flush(timeout=2)
        return True
    except Exception as exc:  # noqa: BLE001 - the file is saved; a service reloads at its next announcement
        log.warning("config revision %s written but llmgw.config.changed could not be published: %s", version,
                    type(exc).__name__)
        return False


async def _save(request: Request, text: str, if_match: str | None, restore: bool, what: str):
    tags = _require_if_match(if_match)
    result = await save(await _kv(request), text, tags, restore)
    if result.status == 409:
        return JSONResponse(error_body(409, "the config changed since it was read (its etag is now "
                                            f"{result.etag}): reload it and apply your change again", "conflict"),
                            status_code=409, headers={"ETag": f'"{result.etag}"'})
    if result.status == 400:
        return _problems_response("invalid config, nothing changed: " + "; ".join(
            f"{p.path or '<root>'}: {p.message}" for p in result.problems[:5]), result.problems)
    announced = True
    version = str(result.revision)
    if result.changed:
        log.info("config %s: revision %s", what, version)
        announced = await _announce(request, result.etag, version)
    reply = SaveReply(etag=result.etag, changed=result.changed, version=version, announced=announced)
    return JSONResponse(reply.model_dump(mode="json"), headers={"ETag": f'"{result.etag}"'})


ERRORS_400 = {400: {"model": ProblemsResponse, "description": "invalid config (problems at field paths); "
                                                              "or a bad request"}}


@router.get("/api/config", response_model=ConfigView)
async def get_config(request: Request):
    """The current config revision as text (literal secrets masked), its etag and version, and the parsed
    config."""
    state = await read(await _kv(request))
    problems = await asyncio.to_thread(parse_problems, state.text)
    data = None if problems else masked(parse_config_text(state.text, STORE))
    etag = str(state.revision)
    view = ConfigView(yaml=mask_text(state.text), etag=etag, path=STORE, masked=data, config=data,
                      version=str(state.revision) if state.revision else None, exists=state.revision > 0,
                      problems=problems)
    return JSONResponse(view.model_dump(mode="json"), headers={"ETag": f'"{etag}"'})


@router.post("/api/config/validate", response_model=ValidateReply)
async def validate_config(request: Request, body: ConfigText):
    """Problems of a config text at their field paths and its diff against the current revision; changes
    nothing."""
    state = await read(await _kv(request))
    _, problems = await asyncio.to_thread(check, body.yaml, state.text if state.revision else None)
    diff = await asyncio.to_thread(diff_text, state.text, body.yaml)
    return JSONResponse(ValidateReply(ok=not problems, problems=problems, diff=diff).model_dump(mode="json"))


@router.put("/api/config", response_model=SaveReply, responses=ERRORS_400)
async def put_config(request: Request, body: ConfigText,
                     if_match: str | None = Header(default=None, max_length=1024,
                                                   description="the etag of the revision this edit started from")):
    """Writes the config as a new revision (unless another was written since If-Match); every service
    applies it live."""
    return await _save(request, body.yaml, if_match, restore=True, what="saved")


@router.get("/api/config/history", response_model=HistoryReply)
async def config_history(request: Request):
    reply = await history(await _kv(request))
    return JSONResponse(reply.model_dump(mode="json"))


@router.post("/api/config/rollback", response_model=SaveReply, responses=ERRORS_400)
async def rollback_config(request: Request, body: RollbackBody,
                          if_match: str | None = Header(default=None, max_length=1024,
                                                        description="the etag of the current revision")):
    """Writes a kept revision's text as a new revision (the current one stays in the history)."""
    _require_if_match(if_match)
    old = await kept(await _kv(request), int(body.version))
    if old is None:
        raise HTTPException(404, f"no kept config version {body.version} (GET /api/config/history)")
    return await _save(request, old.text, if_match, restore=False, what=f"rolled back to {body.version}")


@router.get("/api/config/replicas", response_model=ReplicasReply)
async def config_replicas(request: Request):
    """The config revision each process runs (every one answers ``llmgw.config.revisions``, edges too),
    and whether all of them run the latest revision."""
    nc = request.app.state.nc
    latest = (await read(await _kv(request))).revision
    inbox = nc.new_inbox()
    answers: list[ReplicaRevision] = []

    async def collect(msg) -> None:
        try:
            answer = ConfigRevision.decode(msg.data)
        except ValueError:
            return
        answers.append(ReplicaRevision(service=answer.service, instance=answer.instance,
                                       revision=answer.revision))

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subjects.CONFIG_REVISIONS, b"", reply=inbox)
        await asyncio.sleep(REPLICAS_WAIT_S)  # a scatter-gather: every process answers once, as it can
    finally:
        await sub.unsubscribe()
    answers.sort(key=lambda a: (a.service, a.instance))
    reply = ReplicasReply(latest=latest, replicas=answers,
                          all_latest=bool(answers) and all(a.revision == latest for a in answers))
    return JSONResponse(reply.model_dump(mode="json"))
