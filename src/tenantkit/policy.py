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
        """Raise ``PolicyDenied`` (403) if the body names a model or tool the tenant may not use.

        A body of the wrong shape is a 422 naming every bad field the allow-lists
        and the token estimate read (``model``, ``tools``, ``functions``, the
        completion budget), before any allow-list is applied.
        """
        if type(body) is not dict and not isinstance(body, Mapping):
            raise _invalid("", "the request body must be a JSON object")
        models = tenant.allowed_models
        model = body.get("model")
        model_ok = models is None or (type(model) is str and model in models and bool(model))
        allowed = tenant.allowed_tools
        if model_ok and (allowed is None or _allowed_function_tools(body, allowed)):
            return  # the usual body: allowed and well-formed, without the general walk
        errors = shape_errors(body, models=models is not None, tools=allowed is not None)
        if errors:
            raise _unprocessable(errors)
        if not model_ok:
            raise PolicyDenied(
                f"model {model!r} is not allowed for tenant {tenant.id!r}",
                reason="model_not_allowed",
                model=model,
            )
        assert allowed is not None
        for tool in tool_names(body):
            if tool not in allowed:
                raise PolicyDenied(
                    f"tool {tool!r} is not allowed for tenant {tenant.id!r}",
                    reason="tool_not_allowed",
                    tool=tool,
                )


def shape_errors(
    body: Mapping[str, Any], *, models: bool = True, tools: bool = True
) -> list[dict[str, str]]:
    """Every ``{"field", "message"}`` wrong in the fields the policy and the estimate read.

    ``models``/``tools``: whether ``model`` is required and the tool lists are read
    (a tenant restricting them); the completion budget is always read.
    """
    errors: list[dict[str, str]] = []
    if models:
        model = body.get("model")
        if model is None:
            errors.append(_error("model", "model is required: this tenant restricts models"))
        elif not isinstance(model, str) or not model:
            errors.append(_error("model", "model must be a non-empty string"))
    if tools:
        errors += _scan_tools(body)[1]
    for field in COMPLETION_FIELDS:  # every one given sizes the estimate: each is read
        value = body.get(field)
        if value is not None and (type(value) is not int or value < 0):
            errors.append(_budget_error(field))
    return errors


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
        if type(function) is not dict or entry.get("name") is not None:
            return False
        name = function.get("name")
        if type(name) is not str or name not in allowed or not name:
            return False
    return True


def tool_names(body: Mapping[str, Any]) -> list[str]:
    """Return every tool name the body declares (``tools`` and legacy ``functions``).

    Raises ``UnprocessableEntity`` (422) naming every malformed tool list or entry.
    """
    names, errors = _scan_tools(body)
    if errors:
        raise _unprocessable(errors)
    return names


def _scan_tools(body: Mapping[str, Any]) -> tuple[list[str], list[dict[str, str]]]:
    """The tool names, and an error for each malformed list or entry."""
    names: list[str] = []
    errors: list[dict[str, str]] = []
    for field in ("tools", "functions"):
        entries = body.get(field)
        if entries is None:
            continue
        if not isinstance(entries, list):
            errors.append(_error(field, f"{field} must be an array"))
            continue
        for i, entry in enumerate(entries):
            name, where = _tool_entry(entry, f"{field}[{i}]")
            if name is None:
                errors.append(_error(*where))
            else:
                names.append(name)
            if (
                isinstance(entry, dict | Mapping)
                and entry.get("name") is not None
                and entry.get("function") is not None
            ):
                # Named twice ({"function": {"name": a}, "name": b}): an app reading
                # either shape must find an allowed tool, so both names are checked.
                alias, where = _tool_entry({"name": entry["name"]}, f"{field}[{i}]")
                if alias is None:
                    errors.append(_error(*where))
                elif alias != name:
                    names.append(alias)
    return names, errors


def _tool_entry(entry: object, where: str) -> tuple[str | None, tuple[str, str]]:
    """A tool entry's name, or ``None`` and the ``(field, message)`` saying what is wrong."""
    if isinstance(entry, str):
        name: object = entry
        field = where
    elif isinstance(entry, dict | Mapping):
        function = entry.get("function")
        if function is not None:
            if not isinstance(function, dict | Mapping):
                return None, (f"{where}.function", "function must be an object")
            name, field = function.get("name"), f"{where}.function.name"
        elif "name" in entry:
            name, field = entry.get("name"), f"{where}.name"
        else:
            # Built-in tools of the Responses API name themselves by type: {"type": "web_search"}.
            kind = entry.get("type")
            name, field = (None if kind == "function" else kind), f"{where}.name"
    else:
        return None, (where, "a tool must be a string or an object")
    if not isinstance(name, str) or not name:
        return None, (field, "a tool name must be a non-empty string")
    return name, (field, "")


def estimate_tokens(body: Mapping[str, Any], default: int) -> int:
    """Estimate the tokens a request may use: prompt text plus its completion budget.

    The prompt is ``ceil(characters / 4)`` over the text of ``messages``,
    ``prompt``, ``input``, ``system`` and ``instructions`` (plus 4 per message and
    the declared tools); the completion budget is the largest of ``max_tokens``,
    ``max_completion_tokens`` and ``max_output_tokens`` given, else ``default``.
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
    """The largest budget given (the app may honour any of them), else ``default``."""
    budget = -1
    errors = []
    for field in COMPLETION_FIELDS:
        value = body.get(field)
        if value is None:
            continue
        if type(value) is not int or value < 0:
            errors.append(_budget_error(field))
        elif value > budget:
            budget = value
    if errors:
        raise _unprocessable(errors)
    return default if budget < 0 else budget


def _budget_error(field: str) -> dict[str, str]:
    return _error(field, f"{field} must be a non-negative integer")


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


def _error(field: str, message: str) -> dict[str, str]:
    return {"field": field or "body", "message": message}


def _invalid(field: str, message: str) -> UnprocessableEntity:
    return _unprocessable([_error(field, message)])


def _unprocessable(errors: list[dict[str, str]]) -> UnprocessableEntity:
    """One 422 naming every error; its detail is the message when there is one."""
    if len(errors) == 1:
        detail = errors[0]["message"]
    else:
        detail = f"{len(errors)} fields are invalid: " + ", ".join(e["field"] for e in errors)
    return UnprocessableEntity(detail, errors=errors)
