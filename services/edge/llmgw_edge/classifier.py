"""Optional smart-routing classifier: a small model asked through the gateway itself.

Used only when ``routing.smart.enabled`` and ``routing.smart.classifier_model``
are set. The call goes through this edge's own gateway, in-process (so it is
routed, limited and counted like any request, under no client key) with a
header that stops it from being classified in turn; it has a timeout and an
LRU cache, and any failure falls back to the heuristics.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from typing import Awaitable, Callable

from .core.prompt_class import CLASSES

log = logging.getLogger("llmgw.edge.classifier")

INSTRUCTIONS = ("Classify the user's message into exactly one word: code, research, conversation or complex. "
                "code: programming or technical debugging; research: finding, comparing or summarising "
                "information; complex: multi-step reasoning, planning, maths; conversation: anything else. "
                "Answer with the one word only.")
MAX_CHARS = 4000


class ModelClassifier:
    def __init__(self, ask: Callable[[bytes], Awaitable[bytes | None]], model: str, timeout_s: float,
                 cache_size: int):
        self._ask = ask  # an OpenAI chat body -> the completion's body (None: not answered)
        self._model = model
        self._timeout_s = timeout_s
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
            async with asyncio.timeout(self._timeout_s):
                reply = await self._ask(json.dumps(body).encode())
            if reply is None:
                return None
            answer = json.loads(reply)["choices"][0]["message"]["content"] or ""
        except Exception as exc:  # any failure of the classifier call: the heuristics answer instead
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
