"""Per-tenant allow-lists of models and tools, and the token estimate of a request body.

Read from an OpenAI- or Anthropic-shaped JSON body: ``model``; tools from
``tools[].function.name``, ``tools[].name`` or plain strings, and the legacy
``functions[].name``. On a tenant, ``allowed_models=None`` means unrestricted and
``()`` means nothing is allowed; likewise ``allowed_tools``. A denial is a 403
``PolicyDenied`` whose ``reason`` names what was refused; a body of the wrong
shape is a 422 naming the field, never a 500.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from .errors import PolicyDenied, UnprocessableEntity
from .types import TenantConfig

CHARS_PER_TOKEN = 4
"""Characters per token in the estimate (OpenAI's rule of thumb for English text)."""
TOKENS_PER_MESSAGE = 4
"""Tokens a chat format adds around each message (role, separators)."""
COMPLETION_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
PROMPT_FIELDS = ("prompt", "input", "system", "instructions")
"""Prompt fields besides ``messages``."""


class Policy:
    """Check a request body against its tenant's allow-lists before any quota is charged."""

    def check(self, tenant: TenantConfig, body: Mapping[str, Any]) -> None:
        """Raise ``PolicyDenied`` (403) if the body names a model or tool the tenant may not use."""
        if type(body) is not dict and not isinstance(body, Mapping):
            raise _invalid("", "the request body must be a JSON object")
        models = tenant.allowed_models
        if models is not None:
            model = body.get("model")
            if type(model) is not str or model not in models or not model:
                self._check_model(tenant, body)
        allowed = tenant.allowed_tools
        if allowed is not None and not _allowed_function_tools(body, allowed):
            for tool in tool_names(body):
                if tool not in allowed:
                    raise PolicyDenied(
                        f"tool {tool!r} is not allowed for tenant {tenant.id!r}",
                        reason="tool_not_allowed",
                        tool=tool,
                    )

    def _check_model(self, tenant: TenantConfig, body: Mapping[str, Any]) -> None:
        model = body.get("model")
        if model is None:
            raise _invalid("model", "model is required: this tenant restricts models")
        if not isinstance(model, str) or not model:
            raise _invalid("model", "model must be a non-empty string")
        assert tenant.allowed_models is not None
        if model not in tenant.allowed_models:
            raise PolicyDenied(
                f"model {model!r} is not allowed for tenant {tenant.id!r}",
                reason="model_not_allowed",
                model=model,
            )


def _allowed_function_tools(body: Mapping[str, Any], allowed: tuple[str, ...]) -> bool:
    """Return whether every tool is an allowed ``{"function": {"name": ...}}`` (the usual body).

    ``False`` says nothing: the full check decides, with its exact errors.
    """
    tools = body.get("tools")
    if body.get("functions") is not None:
        return False
    if tools is None:
        return True
    if type(tools) is not list:
        return False
    for entry in tools:
        if type(entry) is not dict:
            return False
        function = entry.get("function")
        if type(function) is not dict:
            return False
        name = function.get("name")
        if type(name) is not str or name not in allowed or not name:
            return False
    return True


def tool_names(body: Mapping[str, Any]) -> list[str]:
    """Return every tool name the body declares (``tools`` and legacy ``functions``)."""
    names: list[str] = []
    for field in ("tools", "functions"):
        entries = body.get(field)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise _invalid(field, f"{field} must be an array")
        for i, entry in enumerate(entries):
            names.append(_tool_name(entry, f"{field}[{i}]"))
    return names


def _tool_name(entry: object, where: str) -> str:
    if isinstance(entry, str):
        name: object = entry
        field = where
    elif isinstance(entry, dict | Mapping):
        function = entry.get("function")
        if function is not None:
            if not isinstance(function, dict | Mapping):
                raise _invalid(f"{where}.function", "function must be an object")
            name, field = function.get("name"), f"{where}.function.name"
        elif "name" in entry:
            name, field = entry.get("name"), f"{where}.name"
        else:
            # Built-in tools of the Responses API name themselves by type: {"type": "web_search"}.
            kind = entry.get("type")
            name, field = (None if kind == "function" else kind), f"{where}.name"
    else:
        raise _invalid(where, "a tool must be a string or an object")
    if not isinstance(name, str) or not name:
        raise _invalid(field, "a tool name must be a non-empty string")
    return name


def estimate_tokens(body: Mapping[str, Any], default: int) -> int:
    """Estimate the tokens a request may use: prompt text plus its completion budget.

    The prompt is ``ceil(characters / 4)`` over the text of ``messages``,
    ``prompt``, ``input``, ``system`` and ``instructions`` (plus 4 per message and
    the declared tools); the completion budget is ``max_tokens`` (or
    ``max_completion_tokens`` / ``max_output_tokens``), else ``default``.
    """
    if not isinstance(body, dict | Mapping):
        return default
    chars = 0
    messages = body.get("messages")
    count = 0
    if type(messages) is list:
        count = len(messages)
        for message in messages:
            # The common message, {"role": ..., "content": "..."}, without the general walk.
            if type(message) is dict and len(message) == 2 and "role" in message:
                content = message.get("content")
                if type(content) is str:
                    chars += len(content)
                    continue
            chars += _text_length(message, 1)
    elif messages is not None:
        chars += _text_length(messages, 0)
    for field in PROMPT_FIELDS:
        value = body.get(field)
        if value is not None:
            chars += _text_length(value, 0)
    tools = body.get("tools") or body.get("functions")
    if type(tools) is list and tools:
        chars += len(_compact_json(tools))
    prompt = -(-chars // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * count
    return prompt + _completion_budget(body, default)


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), default=str)
# The C encoder _COMPACT_JSON.encode builds on every call, built once. Without
# circular-reference markers it is stateless, so threads may share it.
_C_COMPACT = (
    None
    if c_make_encoder is None
    else c_make_encoder(None, str, encode_basestring_ascii, None, ":", ",", False, False, True)
)


def _compact_json(value: object) -> str:
    """``_COMPACT_JSON.encode(value)``: the same text, or the same error."""
    if _C_COMPACT is None:
        return _COMPACT_JSON.encode(value)
    try:
        return "".join(_C_COMPACT(value, 0))
    except RecursionError:
        # A circular (or absurdly deep) value: let the checking encoder raise its error.
        return _COMPACT_JSON.encode(value)


def _completion_budget(body: Mapping[str, Any], default: int) -> int:
    for field in COMPLETION_FIELDS:
        value = body.get(field)
        if value is None:
            continue
        if type(value) is not int or value < 0:
            raise _invalid(field, f"{field} must be a non-negative integer")
        return value
    return default


def _text_length(value: object, depth: int) -> int:
    """Characters of text in a prompt value: strings, content parts, nested messages."""
    if isinstance(value, str):
        return len(value)
    if depth > 8:  # a pathological nesting is not a prompt; stop counting, never recurse deep
        return 0
    if isinstance(value, dict | Mapping):
        total = 0
        for key in ("content", "text", "input", "arguments", "name"):
            part = value.get(key)
            if part is not None:
                total += _text_length(part, depth + 1)
        function = value.get("function")
        if isinstance(function, dict | Mapping):
            total += _text_length(function, depth + 1)
        calls = value.get("tool_calls")
        if isinstance(calls, list):
            total += _text_length(calls, depth + 1)
        return total
    if isinstance(value, list | tuple):
        return sum(_text_length(item, depth + 1) for item in value)
    return 0


def _invalid(field: str, message: str) -> UnprocessableEntity:
    return UnprocessableEntity(message, errors=[{"field": field or "body", "message": message}])
