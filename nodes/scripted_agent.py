"""The scripted model's answers for BiLLP's roles: a deterministic test double, not an LLM.

It reads the same prompts a real model reads and answers by simple rules: follow a + hint of the
actor memory, otherwise the first history title or candidate not yet recommended and not marked -;
value a state by its last rating (or a near-exact critic-memory hint). Under
`logged_items="exclude"` (the default) a history title is only a query: grounding skips the
user's logged items and recommends the nearest title they lack (marked replaced), and shortlist
candidates never hold logged items - so the double never recommends what the user owns.
Tests and the offline demo use it to exercise the whole graph; its numbers are never reported
as an LLM's.
"""

from __future__ import annotations

import json
import re
from typing import Any

from langchain_core.messages import BaseMessage
from pydantic import BaseModel

from nodes.llm.scripted import register_scripted_responder

NAME = "billp"
_DECODER = json.JSONDecoder()


def _section(text: str, header: str) -> list[str]:
    """Return the lines of the block that follows a line starting with `header`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(header):
            block = []
            for row in lines[i + 1 :]:
                if not row.strip():
                    break
                block.append(row)
            return block
    return []


def _quoted(line: str) -> str | None:
    """Return the first JSON string literal of a line (titles are quoted in every prompt)."""
    start = line.find('"')
    if start < 0:
        return None
    try:
        value, _ = _DECODER.raw_decode(line[start:])
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _hints(text: str) -> tuple[list[str], set[str]]:
    good, bad = [], set()
    for line in _section(text, "Memory of a similar past state"):
        title = _quoted(line)
        if title is not None:
            (good.append(title) if line.startswith("+") else bad.add(title))
    return good, bad


def _choose_title(text: str) -> str:
    done = {t for line in _section(text, "Already recommended") if (t := _quoted(line))}
    good, bad = _hints(text)
    for title in good:
        if title not in done:
            return title
    history = [t for line in _section(text, "User history") if (t := _quoted(line))]
    for title in reversed(history):
        if title not in done and title not in bad:
            return title
    return history[-1] if history else "unknown item"


def _choose_candidate(text: str) -> int:
    good, bad = _hints(text)
    numbered = []
    for line in _section(text, "Candidates"):
        m = re.match(r"(\d+)\. ", line)
        if m:
            numbered.append((int(m.group(1)), _quoted(line)))
    for n, title in numbered:
        if title in good:
            return n
    for n, title in numbered:
        if title not in bad:
            return n
    return numbered[0][0] if numbered else 1


def _value(text: str) -> int:
    hint = re.search(r"near-identical past state: (-?\d+(?:\.\d+)?)", text)
    if hint:
        return max(-5, min(5, round(float(hint.group(1)))))
    ratings = re.findall(r" rated (\d+(?:\.\d+)?)", text)
    return max(-5, min(5, round(float(ratings[-1]) - 3))) if ratings else 0


def respond(messages: list[BaseMessage], schema: type[BaseModel] | None) -> dict[str, Any] | str:
    """Answer one BiLLP prompt deterministically by the rules in the module docstring."""
    text = messages[-1].text if messages else ""
    fields = set(schema.model_fields) if schema is not None else set()
    if "thought" in fields:
        return {"thought": "Stay close to the user's taste but change genre every step."}
    if "title" in fields:
        return {"title": _choose_title(text)}
    if "choice" in fields:
        return {"choice": _choose_candidate(text)}
    if "value" in fields:
        return {"value": _value(text)}
    if "reflection" in fields:
        return {"reflection": "The user left after a poor or repetitive item; vary genres sooner."}
    return "scripted answer"


register_scripted_responder(NAME, respond)
