"""A deterministic local "model": the gateway's stand-in for an upstream LLM.

Same request, same answer, and honest token accounting with the rule the
quota reservation uses (4 characters a token, 4 tokens a message), so the
settled count and the estimate agree on what a token is.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tenantkit.policy import CHARS_PER_TOKEN, TOKENS_PER_MESSAGE, tool_names

DEFAULT_MAX_TOKENS = 256
_WORD = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class Completion:
    """One answer: a message (text or a tool call), why it stopped, and its usage."""

    message: dict[str, Any]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens (what the tenant is charged)."""
        return self.prompt_tokens + self.completion_tokens


def count_tokens(text: str) -> int:
    """Return the token count of ``text`` (ceil of characters / 4)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        return " ".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return ""


def complete(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Any] = (),
    max_tokens: int | None = None,
) -> Completion:
    """Answer a chat: call a declared tool the user names, else summarise their last message."""
    budget = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    prompt = sum(TOKENS_PER_MESSAGE + count_tokens(_text(m.get("content"))) for m in messages)
    last = next(
        (_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    words = _WORD.findall(last)
    for name in tool_names({"tools": list(tools)}):
        if name.lower() in (w.lower() for w in words):
            arguments = json.dumps({"query": last[:200]})
            call = {
                "id": "call_" + hashlib.sha256(f"{model}|{name}|{last}".encode()).hexdigest()[:24],
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            used = count_tokens(name + arguments)
            return Completion(message, "tool_calls", prompt, min(used, budget))
    if words:
        topic = " ".join(words[:12])
        plural = "" if len(words) == 1 else "s"
        text = (
            f"[{model}] You wrote {len(words)} word{plural} about: {topic}. "
            f"Here is my answer: {' '.join(reversed(words))}"
        )
    else:
        text = f"[{model}] I received no question. How can I help?"
    finish = "stop"
    if count_tokens(text) > budget:
        text = text[: budget * CHARS_PER_TOKEN]
        finish = "length"
    return Completion({"role": "assistant", "content": text}, finish, prompt, count_tokens(text))


def completion_id(body: Mapping[str, Any]) -> str:
    """Return a stable id for a request body (same request, same id)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return "chatcmpl-" + hashlib.sha256(canonical.encode()).hexdigest()[:29]
