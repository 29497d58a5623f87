"""Model and tool allow-lists, body shapes, and the token estimate."""

from __future__ import annotations

from typing import Any

import pytest

from tenantkit.errors import PolicyDenied, UnprocessableEntity
from tenantkit.policy import Policy, estimate_tokens, tool_names
from tenantkit.types import TenantConfig


def tenant(
    models: tuple[str, ...] | None = None, tools: tuple[str, ...] | None = None
) -> TenantConfig:
    return TenantConfig(id="acme", name="Acme", allowed_models=models, allowed_tools=tools)


def chat(model: str = "gpt-4o", tools: list[Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if tools is not None:
        body["tools"] = tools
    return body


def fn(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {}}}


def test_null_allow_lists_are_unrestricted() -> None:
    """None allows any model and any tool."""
    Policy().check(tenant(), chat("anything", [fn("rm_rf")]))


def test_empty_allow_lists_allow_nothing() -> None:
    """An empty tuple refuses every model."""
    with pytest.raises(PolicyDenied) as caught:
        Policy().check(tenant(models=()), chat("gpt-4o"))
    assert caught.value.extra == {"reason": "model_not_allowed", "model": "gpt-4o"}


def test_empty_tool_list_allows_requests_without_tools() -> None:
    """allowed_tools=() refuses any tool but not a request that declares none."""
    Policy().check(tenant(tools=()), chat())
    with pytest.raises(PolicyDenied):
        Policy().check(tenant(tools=()), chat(tools=[fn("search")]))


def test_model_denied_is_403_naming_it() -> None:
    """A model outside the list is a 403 with reason model_not_allowed and no Retry-After."""
    with pytest.raises(PolicyDenied) as caught:
        Policy().check(tenant(models=("gpt-4o-mini",)), chat("gpt-4o"))
    exc = caught.value
    assert exc.status == 403
    assert "Retry-After" not in exc.headers
    problem = exc.to_problem()
    assert problem["reason"] == "model_not_allowed"
    assert problem["model"] == "gpt-4o"


def test_allowed_model_passes() -> None:
    """A listed model passes."""
    Policy().check(tenant(models=("gpt-4o",)), chat("gpt-4o"))


@pytest.mark.parametrize(
    "tool",
    [
        fn("shell"),
        {"name": "shell", "input_schema": {}},
        "shell",
    ],
    ids=["openai-function", "anthropic-name", "string"],
)
def test_tool_denied_in_every_shape(tool: Any) -> None:
    """A tool is found by function.name, name or as a string; denial names it."""
    with pytest.raises(PolicyDenied) as caught:
        Policy().check(tenant(tools=("search",)), chat(tools=[fn("search"), tool]))
    assert caught.value.extra == {"reason": "tool_not_allowed", "tool": "shell"}


def test_legacy_functions_are_checked() -> None:
    """The deprecated functions[] field cannot bypass the tool allow-list."""
    body = chat()
    body["functions"] = [{"name": "shell", "parameters": {}}]
    with pytest.raises(PolicyDenied):
        Policy().check(tenant(tools=("search",)), body)


def test_builtin_tools_are_named_by_type() -> None:
    """A built-in tool such as {"type": "web_search"} is checked under its type."""
    assert tool_names({"tools": [{"type": "web_search"}, fn("f")]}) == ["web_search", "f"]


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "function", "function": {"name": "search"}, "name": "shell"},
        {"name": "shell", "function": {"name": "search"}},
    ],
    ids=["function-first", "name-first"],
)
def test_a_tool_named_in_both_shapes_is_checked_under_both(tool: dict[str, Any]) -> None:
    """An entry with function.name and name is allowed only if both are: an app may read either."""
    with pytest.raises(PolicyDenied) as caught:
        Policy().check(tenant(tools=("search",)), chat(tools=[tool]))
    assert caught.value.extra == {"reason": "tool_not_allowed", "tool": "shell"}
    body = chat()
    body["functions"] = [{"name": "shell", "function": {"name": "search"}}]
    with pytest.raises(PolicyDenied):
        Policy().check(tenant(tools=("search",)), body)
    Policy().check(tenant(tools=("search", "shell")), chat(tools=[tool]))
    with pytest.raises(UnprocessableEntity) as bad:
        Policy().check(tenant(tools=("search",)), chat(tools=[{**tool, "name": 5}]))
    assert bad.value.extra["errors"][0]["field"] == "tools[0].name"
    Policy().check(tenant(tools=("search",)), chat(tools=[{**tool, "name": None}]))  # absent


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "m", "tools": {"name": "x"}}, "tools"),
        ({"model": "m", "tools": [42]}, "tools[0]"),
        ({"model": "m", "tools": [{"function": "x"}]}, "tools[0].function"),
        ({"model": "m", "tools": [{"function": {"name": ""}}]}, "tools[0].function.name"),
        ({"model": "m", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"model": 7}, "model"),
        ({"messages": []}, "model"),
    ],
)
def test_malformed_shapes_are_422(body: dict[str, Any], field: str) -> None:
    """Wrong shapes are a 422 naming the field, never a 500."""
    with pytest.raises(UnprocessableEntity) as caught:
        Policy().check(tenant(models=("m",), tools=("x",)), body)
    assert caught.value.extra["errors"][0]["field"] == field


def test_every_bad_field_is_named_in_one_422() -> None:
    """A body wrong in several fields is one 422 naming each, before any allow-list applies."""
    body = {"model": 7, "messages": [], "tools": "x", "functions": [3], "max_tokens": -1}
    with pytest.raises(UnprocessableEntity) as caught:
        Policy().check(tenant(models=("m",), tools=("x",)), body)
    fields = [error["field"] for error in caught.value.extra["errors"]]
    assert fields == ["model", "tools", "functions[0]", "max_tokens"]
    assert caught.value.detail == "4 fields are invalid: model, tools, functions[0], max_tokens"
    # A disallowed model does not hide a malformed tool list behind a 403.
    with pytest.raises(UnprocessableEntity) as caught:
        Policy().check(tenant(models=("m",), tools=("x",)), {"model": "n", "tools": [{}]})
    assert [e["field"] for e in caught.value.extra["errors"]] == ["tools[0].name"]


def test_budget_is_named_beside_the_policy_fields_it_rides_with() -> None:
    """A bad max_tokens joins the policy's errors; alone, the estimate names it."""
    with pytest.raises(UnprocessableEntity) as caught:
        Policy().check(tenant(models=("m",)), {"max_tokens": "9"})
    assert [e["field"] for e in caught.value.extra["errors"]] == ["model", "max_tokens"]
    Policy().check(tenant(models=("m",)), {"model": "m", "max_tokens": "9"})  # the fast path
    with pytest.raises(UnprocessableEntity) as caught:
        estimate_tokens({"model": "m", "max_tokens": "9"}, default=10)
    assert [e["field"] for e in caught.value.extra["errors"]] == ["max_tokens"]


def test_body_must_be_an_object() -> None:
    """A JSON array body is a 422."""
    with pytest.raises(UnprocessableEntity):
        Policy().check(tenant(models=("m",)), [])  # type: ignore[arg-type]


def test_estimate_counts_prompt_and_max_tokens() -> None:
    """Prompt characters / 4 plus 4 per message, plus max_tokens."""
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "x" * 40},
            {"role": "user", "content": [{"type": "text", "text": "y" * 80}]},
        ],
        "max_tokens": 256,
    }
    assert estimate_tokens(body, default=1000) == 10 + 20 + 2 * 4 + 256


def test_estimate_uses_the_default_completion_budget() -> None:
    """Without max_tokens the configured default stands in for the completion."""
    assert estimate_tokens({"prompt": "z" * 400}, default=1000) == 100 + 1000
    assert estimate_tokens({}, default=1000) == 1000


def test_estimate_reads_newer_budget_fields() -> None:
    """max_completion_tokens and max_output_tokens count like max_tokens."""
    assert estimate_tokens({"max_completion_tokens": 7}, default=1000) == 7
    assert estimate_tokens({"max_output_tokens": 9, "input": "abcd"}, default=1000) == 10


def test_every_budget_field_given_is_read() -> None:
    """Several completion budgets: the largest is reserved (an app may honour any), each
    must be valid."""
    body = {"max_tokens": 1, "max_completion_tokens": 5_000, "max_output_tokens": 7}
    assert estimate_tokens(body, default=10) == 5_000
    bad = {"model": "m", "max_tokens": 100, "max_completion_tokens": -5}
    with pytest.raises(UnprocessableEntity) as caught:
        estimate_tokens(bad, default=10)
    assert [e["field"] for e in caught.value.extra["errors"]] == ["max_completion_tokens"]
    with pytest.raises(UnprocessableEntity) as caught:
        Policy().check(tenant(models=("n",)), bad)
    assert [e["field"] for e in caught.value.extra["errors"]] == ["max_completion_tokens"]


@pytest.mark.parametrize("value", [-1, "100", 1.5, True])
def test_invalid_max_tokens_is_422(value: Any) -> None:
    """A max_tokens that is not a non-negative integer cannot size a reservation."""
    with pytest.raises(UnprocessableEntity) as caught:
        estimate_tokens({"max_tokens": value}, default=10)
    assert caught.value.extra["errors"][0]["field"] == "max_tokens"


def test_estimate_survives_odd_shapes() -> None:
    """Unknown content shapes count as no text rather than failing."""
    body = {"messages": [None, 3, {"content": {"deep": [1, 2]}}, {"content": [[["a"]]]}]}
    assert estimate_tokens(body, default=0) == 1 + 4 * 4
