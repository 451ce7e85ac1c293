"""Optional smart-routing classifier: a small model asked through the gateway itself.

Used only when ``routing.smart.enabled`` and ``routing.smart.classifier_model``
are set. The call goes to this edge's own API (so it is routed, limited and
counted like any request) with a header that stops it from being classified
in turn; it has a timeout and an LRU cache, and any failure falls back to the
heuristics.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict

import aiohttp

from .core.prompt_class import CLASSES

log = logging.getLogger("llmgw.edge.classifier")

INSTRUCTIONS = ("Classify the user's message into exactly one word: code, research, conversation or complex. "
                "code: programming or technical debugging; research: finding, comparing or summarising "
                "information; complex: multi-step reasoning, planning, maths; conversation: anything else. "
                "Answer with the one word only.")
MAX_CHARS = 4000


class ModelClassifier:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, model: str, timeout_s: float,
                 cache_size: int):
        self._session = session
        self._url = base_url.rstrip("/") + "/v1/chat/completions"
        self._model = model
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cache_size = cache_size

    async def __call__(self, text: str) -> str | None:
        text = text[:MAX_CHARS]
        key = hashlib.sha256(text.encode()).hexdigest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        body = {"model": self._model, "temperature": 0, "max_tokens": 5,
                "messages": [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": text}]}
        try:
            async with self._session.post(self._url, data=json.dumps(body),
                                          headers={"content-type": "application/json",
                                                   "x-llmgw-internal": "classifier"},
                                          timeout=self._timeout) as r:
                if r.status != 200:
                    return None
                answer = (await r.json())["choices"][0]["message"]["content"] or ""
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, IndexError, TypeError) as exc:
            log.info("classifier model unavailable (%s); using heuristics", type(exc).__name__)
            return None
        words = answer.strip().lower().split()
        found = words[0].strip(".,:;!\"'") if words else ""
        if found not in CLASSES:
            return None
        self._cache[key] = found
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return found
