"""Asking back-end services over NATS from a route, with their failures mapped to HTTP errors."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from llmgw_common.messages import Message
from llmgw_common.nats_conn import RemoteError, request


async def ask(app: FastAPI, subject: str, msg: Message, reply_type, service: str = "the service"):
    try:
        return await request(app.state.nc, subject, msg, reply_type, app.state.settings.query_timeout_s)
    except (NatsTimeoutError, NoRespondersError):
        raise HTTPException(503, f"{service} is not answering") from None
    except RemoteError as exc:
        raise HTTPException(exc.status if 400 <= exc.status < 600 else 502, str(exc)) from None
