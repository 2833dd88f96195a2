"""Does a tool call fit the tools that were offered? Name, JSON arguments, JSON Schema.

Used by evaluation (a candidate's calls) and by production monitoring (the served model's
calls), which need no ground truth for it. Tools come as OpenAI sends them:
`{"type": "function", "function": {"name", "parameters"}}` or the flat Responses-API form
`{"name", "parameters"}`. A tool whose `parameters` is not valid JSON Schema is reported
(`problem`) and its calls are judged on their name only (`schema_valid` None); so is one
whose `$ref` cannot be resolved (nothing is fetched) or refers to itself without end, which
only shows when a call is validated. Tools come from production traffic: no schema may fail
the landing of a trace file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from referencing.exceptions import Unresolvable


class ToolCallCheck(NamedTuple):
    name_offered: bool
    arguments_parse: bool
    # None: nothing to validate against (tool not offered, no usable schema, unparsable arguments)
    schema_valid: bool | None
    problem: str | None


def tool_schemas(tools: Sequence[dict[str, Any]] | None) -> dict[str, dict[str, Any] | None]:
    """Offered tool name -> its `parameters` schema (None when the tool declares none)."""
    schemas: dict[str, dict[str, Any] | None] = {}
    for tool in tools or ():
        if not isinstance(tool, dict):
            continue
        spec = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        name = spec.get("name")
        if isinstance(name, str) and name:
            parameters = spec.get("parameters")
            schemas[name] = parameters if isinstance(parameters, dict) else None
    return schemas


def check_tool_call(tools: Sequence[dict[str, Any]] | None, name: str, arguments: Any) -> ToolCallCheck:
    """Judge one call. `arguments` is the JSON string a model emits, or the parsed object."""
    return OfferedTools(tools).check(name, arguments)


class CallCounts(NamedTuple):
    calls: int
    name_offered: int  # calls naming an offered tool
    schema_valid: int  # of those, calls whose arguments validate (see `OfferedTools.count`)


class OfferedTools:
    """The tools one request offered, each schema's validator compiled on first use: keep
    an instance for a tool set that repeats (a workload offers the same tools all day)."""

    def __init__(self, tools: Sequence[dict[str, Any]] | None):
        self.schemas = tool_schemas(tools)
        self._validators: dict[str, tuple[Any, str | None]] = {}

    def check(self, name: str, arguments: Any) -> ToolCallCheck:
        parsed, parse_problem = _parse_arguments(arguments)
        if name not in self.schemas:
            offered = ", ".join(sorted(self.schemas)) or "none"
            return ToolCallCheck(
                False, parse_problem is None, None, f"tool {name!r} was not offered (offered: {offered})"
            )
        if parse_problem:
            return ToolCallCheck(True, False, None, parse_problem)
        schema = self.schemas[name]
        if schema is None:
            return ToolCallCheck(True, True, None, None)
        if name not in self._validators:
            self._validators[name] = _validator(json.dumps(schema, sort_keys=True))
        validator, schema_problem = self._validators[name]
        if validator is None:
            return ToolCallCheck(True, True, None, f"tool {name!r} has an invalid JSON Schema: {schema_problem}")
        try:
            error = next(iter(sorted(validator.iter_errors(parsed), key=lambda e: list(e.path))), None)
        except (Unresolvable, RecursionError) as unusable:  # `{"$ref": "#/nowhere"}`, `{"$ref": "#"}`
            problem = str(unusable) if isinstance(unusable, Unresolvable) else "its $ref refers to itself without end"
            return ToolCallCheck(True, True, None, f"tool {name!r} has an invalid JSON Schema: {problem}")
        if error is None:
            return ToolCallCheck(True, True, True, None)
        where = "/".join(str(part) for part in error.path) or "arguments"
        return ToolCallCheck(True, True, False, f"{where}: {error.message}")

    def count(self, calls: Sequence[Any]) -> CallCounts:
        """The calls of an answer (`tool_calls` as sent: `{"function": {"name", "arguments"}}`)
        as production monitoring counts them: a call to a tool that declares no usable
        schema counts as valid once its arguments parse."""
        offered = valid = 0
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            function = function if isinstance(function, dict) else {}
            name = function.get("name")
            check = self.check(name if isinstance(name, str) else "", function.get("arguments"))
            offered += check.name_offered
            valid += bool(
                check.schema_valid or (check.schema_valid is None and check.name_offered and check.arguments_parse)
            )
        return CallCounts(len(calls), offered, valid)


def _parse_arguments(arguments: Any) -> tuple[Any, str | None]:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError as error:
            return None, f"arguments are not JSON: {error}"
    if not isinstance(arguments, dict):
        return None, f"arguments must be a JSON object, got {type(arguments).__name__}"
    return arguments, None


@lru_cache(maxsize=1024)
def _validator(schema_json: str) -> tuple[Any, str | None]:
    # keyed by the schema's canonical JSON: a workload offers the same few tools millions of times
    schema = json.loads(schema_json)
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as error:
        return None, error.message
    return cls(schema), None
