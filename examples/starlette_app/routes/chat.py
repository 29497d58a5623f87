"""The AI gateway (seed 002): OpenAI-shaped chat completions with model and tool policies.

Before this handler runs, tenantkit has checked the model and tools against
the tenant's allow-lists (403) and reserved the estimated tokens against its
token quota (429). The handler reports the real count with
``report_tokens``; tenantkit settles the reservation to it.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tenantkit.context import report_tokens

from ..completion import complete, completion_id
from ..openapi import operation
from ..services import json, services
from ..validation import Body, Field, invalid, read_json

_TOOL = Field(
    "tool",
    "any",
    any_of=(
        Field("name", "string", min_length=1, max_length=200),
        Field(
            "function_tool",
            "object",
            fields=(
                Field("type", "string", enum=("function",)),
                Field(
                    "function",
                    "object",
                    required=True,
                    fields=(
                        Field("name", "string", required=True, min_length=1, max_length=200),
                        Field("description", "string", max_length=2000),
                        Field("parameters", "object"),
                    ),
                ),
            ),
        ),
    ),
)
_TEXT_PART = Field(
    "part",
    "object",
    fields=(
        Field("type", "string", required=True, enum=("text",)),
        Field("text", "string", required=True, max_length=200_000),
    ),
)
_TOOL_CALL = Field(
    "tool_call",
    "object",
    fields=(
        Field("id", "string", required=True, min_length=1, max_length=200),
        Field("type", "string", required=True, enum=("function",)),
        Field(
            "function",
            "object",
            required=True,
            fields=(
                Field("name", "string", required=True, min_length=1, max_length=200),
                Field("arguments", "string", required=True, max_length=200_000),
            ),
        ),
    ),
)
_MESSAGE = Field(
    "message",
    "object",
    fields=(
        Field("role", "string", required=True, enum=("system", "user", "assistant", "tool")),
        # OpenAI's shapes: a string, null (an assistant's tool call), or text parts.
        Field(
            "content",
            "any",
            required=True,
            nullable=True,
            any_of=(
                Field("text", "string", max_length=200_000),
                Field("parts", "array", max_items=100, items=_TEXT_PART),
            ),
        ),
        Field("name", "string", max_length=200),
        Field("tool_call_id", "string", max_length=200),
        Field("tool_calls", "array", max_items=128, items=_TOOL_CALL),
    ),
)
CHAT = Body(
    (
        Field("model", "string", required=True, min_length=1, max_length=200),
        Field("messages", "array", required=True, min_length=1, max_items=1000, items=_MESSAGE),
        Field("tools", "array", max_items=128, items=_TOOL),
        Field("max_tokens", "integer", minimum=1, maximum=32_768),
        Field("temperature", "number", minimum=0, maximum=2),
        Field("stream", "boolean", description="must be false: streaming is not offered"),
        Field("user", "string", max_length=200),
    )
)
COMPLETION = {
    "type": "object",
    "required": ["id", "object", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "usage": {
            "type": "object",
            "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
            "properties": {
                "prompt_tokens": {"type": "integer"},
                "completion_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
        },
    },
}


@operation(
    "Create a chat completion (model and tool policies, token quota)",
    tag="gateway",
    security="tenant",
    body=CHAT,
    responses={200: COMPLETION},
)
async def chat_completions(request: Request) -> Response:
    s = services(request)
    # Nothing is generated until the request is known to be good: a refused one
    # returns its whole token reservation.
    report_tokens(0)
    raw = await read_json(request, max_bytes=s.config.max_body_bytes)
    data = CHAT.parse(raw)
    if data.get("stream"):
        raise invalid([{"field": "stream", "message": "streaming is not supported"}])
    answer = complete(
        data["model"],
        data["messages"],
        tools=data.get("tools") or (),
        max_tokens=data.get("max_tokens"),
    )
    report_tokens(answer.total_tokens)
    return json(
        {
            "id": completion_id(raw),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": data["model"],
            "choices": [
                {"index": 0, "message": answer.message, "finish_reason": answer.finish_reason}
            ],
            "usage": {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.total_tokens,
            },
        }
    )


routes = [Route("/api/chat/completions", chat_completions, methods=["POST"], name="chat")]
