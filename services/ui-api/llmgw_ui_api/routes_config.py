"""The config editor's routes: read, validate, save and roll back the gateway's YAML file.

- ``GET /api/config``: the file as it is on disk (comments, order and all) with its literal secrets
  masked, its ``etag`` (SHA-256 of the file's bytes), its ``version`` and the masked config as data.
- ``POST /api/config/validate``: ``{"yaml"}`` → the problems at their field paths and a unified diff
  against the running file (secrets masked on both sides). No side effects.
- ``PUT /api/config``: ``{"yaml"}`` with ``If-Match: <etag>`` (428 without it, 409 when the file
  changed meanwhile, 400 with ``problems`` when invalid: nothing changes). The file is replaced
  atomically, the previous content kept in the history (``config_store``), and
  ``llmgw.config.changed`` announced: every service reloads the file live.
- ``GET /api/config/history``, ``POST /api/config/rollback`` (``{"version"}`` + ``If-Match``): the
  kept versions, newest first; a rollback saves that version's content like a PUT.

The rooms: ``config_models`` (request and reply shapes), ``config_secrets`` (secrets masked in what is
shown, put back in what is saved), ``config_store`` (versions, history, atomic writes), and the
problems themselves from ``llmgw_common.config_check`` (what ``llmgw config check`` says too).
"""

from __future__ import annotations

import asyncio
import errno
import logging

from fastapi import APIRouter, Header, HTTPException, Request
from starlette.responses import JSONResponse

from llmgw_common import subjects
from llmgw_common.config import masked, parse_config_text
from llmgw_common.messages import ConfigChanged

from .config_models import (ConfigText, ConfigView, HistoryReply, Problem, ProblemsResponse, RollbackBody,
                            SaveReply, ValidateReply)
from .config_secrets import diff_text, mask_text
from .config_store import check, history, history_dir, parse_problems, read_file, save
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


def _lock(request: Request) -> asyncio.Lock:
    lock = getattr(request.app.state, "config_write_lock", None)
    if lock is None:
        lock = request.app.state.config_write_lock = asyncio.Lock()
    return lock


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
        log.warning("config saved as %s but llmgw.config.changed could not be published: %s", version,
                    type(exc).__name__)
        return False


async def _save(request: Request, text: str, if_match: str | None, restore: bool, what: str):
    tags = _require_if_match(if_match)
    settings = request.app.state.settings
    async with _lock(request):
        try:
            result = await asyncio.to_thread(save, settings.config_path, settings.state_dir, text, tags, restore)
        except OSError as exc:
            log.error("cannot write the config file %s: %s", settings.config_path, exc)
            hint = (": it is a mount point of its own (a single-file bind mount) and cannot be replaced atomically; "
                    "mount its directory instead") if exc.errno in (errno.EBUSY, errno.EXDEV) else ""
            raise HTTPException(500, f"cannot write the config file ({exc.strerror or type(exc).__name__}){hint}"
                                ) from None
    if result.status == 409:
        return JSONResponse(error_body(409, "the config file changed since it was read (its etag is now "
                                            f"{result.etag}): reload it and apply your change again", "conflict"),
                            status_code=409, headers={"ETag": f'"{result.etag}"'})
    if result.status == 400:
        return _problems_response("invalid config, nothing changed: " + "; ".join(
            f"{p.path or '<root>'}: {p.message}" for p in result.problems[:5]), result.problems)
    announced = True
    if result.changed:
        log.info("config %s: version %s (etag %s)", what, result.version, result.etag[:8])
        announced = await _announce(request, result.etag, result.version or "")
    reply = SaveReply(etag=result.etag, changed=result.changed, version=result.version or "", announced=announced)
    return JSONResponse(reply.model_dump(mode="json"), headers={"ETag": f'"{result.etag}"'})


ERRORS_400 = {400: {"model": ProblemsResponse, "description": "invalid config (problems at field paths); "
                                                              "or a bad request"}}


@router.get("/api/config", response_model=ConfigView)
async def get_config(request: Request):
    """The config file as text (literal secrets masked), its etag and version, and the parsed config."""
    path = request.app.state.settings.config_path
    state = await asyncio.to_thread(read_file, path)
    text = state.text or ""
    problems = parse_problems(text)
    data = None if problems else masked(parse_config_text(text, str(path)))
    view = ConfigView(yaml=mask_text(text), etag=state.etag, path=str(path), masked=data, config=data,
                      version=state.version, exists=state.data is not None, problems=problems)
    return JSONResponse(view.model_dump(mode="json"), headers={"ETag": f'"{state.etag}"'})


@router.post("/api/config/validate", response_model=ValidateReply)
async def validate_config(request: Request, body: ConfigText):
    """Problems of a config text at their field paths and its diff against the running file; changes
    nothing."""
    state = await asyncio.to_thread(read_file, request.app.state.settings.config_path)
    current = state.text or ""
    _, problems = await asyncio.to_thread(check, body.yaml, state.text)
    diff = await asyncio.to_thread(diff_text, current, body.yaml)
    return JSONResponse(ValidateReply(ok=not problems, problems=problems, diff=diff).model_dump(mode="json"))


@router.put("/api/config", response_model=SaveReply, responses=ERRORS_400)
async def put_config(request: Request, body: ConfigText,
                     if_match: str | None = Header(default=None, max_length=1024,
                                                   description="the etag of the file this edit started from")):
    """Saves the config (atomically, the previous one kept) and has every service reload it."""
    return await _save(request, body.yaml, if_match, restore=True, what="saved")


@router.get("/api/config/history", response_model=HistoryReply)
async def config_history(request: Request):
    settings = request.app.state.settings
    reply = await asyncio.to_thread(history, settings.config_path, settings.state_dir)
    return JSONResponse(reply.model_dump(mode="json"))


@router.post("/api/config/rollback", response_model=SaveReply, responses=ERRORS_400)
async def rollback_config(request: Request, body: RollbackBody,
                          if_match: str | None = Header(default=None, max_length=1024,
                                                        description="the etag of the current file")):
    """Saves a kept version's content as the config (the current one goes to the history)."""
    _require_if_match(if_match)
    path = history_dir(request.app.state.settings.state_dir) / f"{body.version}.yaml"
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        raise HTTPException(404, f"no kept config version {body.version} (GET /api/config/history)") from None
    return await _save(request, data.decode("utf-8", errors="replace"), if_match, restore=False,
                       what=f"rolled back to {body.version}")
