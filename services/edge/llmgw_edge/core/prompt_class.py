"""Smart routing: classify a prompt as code, research, conversation or complex by quick heuristics.

Cheap enough to run on every request (a few regular expressions over the last
user message); the optional classifier model is asked only when configured.
"""

from __future__ import annotations

import re

CLASSES = ("code", "research", "conversation", "complex")

_CODE = re.compile(
    r"```|Traceback \(most recent call last\)|#include\b|\bSELECT\s+.+\s+FROM\b|"
    r"\b(def|class|import|return|function|const|let|var|public static|stack trace|compile|refactor|regex|"
    r"unit test|bug|exception|python|javascript|typescript|rust|golang|java|c\+\+|sql|bash|dockerfile|"
    r"kubernetes|api endpoint)\b",
    re.IGNORECASE)
_RESEARCH = re.compile(
    r"\b(research|sources?|citations?|references?|literature|compare|comparison|pros and cons|survey|"
    r"history of|what is known|evidence|studies|analy[sz]e|explain in detail|in depth|overview of|summari[sz]e)\b",
    re.IGNORECASE)
_COMPLEX = re.compile(
    r"\b(step by step|prove|proof|derive|optimi[sz]e|design an?|architecture|trade-?offs?|plan for|strategy|"
    r"multi-step|reason through|calculate|equation|algorithm)\b", re.IGNORECASE)
_GREETING = re.compile(r"^\s*(hi|hello|hey|thanks|thank you|good (morning|evening|afternoon)|how are you|yo)\b",
                       re.IGNORECASE)


def classify(text: str) -> str:
    if _CODE.search(text):
        return "code"
    words = len(text.split())
    if _GREETING.search(text) and words <= 12:
        return "conversation"
    complex_hits = len(_COMPLEX.findall(text))
    if complex_hits >= 2 or (complex_hits and words > 80) or words > 400:
        return "complex"
    if _RESEARCH.search(text):
        return "research"
    if complex_hits:
        return "complex"
    return "conversation"
