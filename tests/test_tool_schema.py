"""Tool calls judged against the offered tools: name, JSON arguments, JSON Schema."""

from flywheel_assets.core.tool_schema import check_tool_call, tool_schemas

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
FLAT_NO_SCHEMA = {"type": "function", "name": "ping"}
BROKEN = {"type": "function", "function": {"name": "broken", "parameters": {"type": "no-such-type"}}}


def test_both_tool_forms_are_read():
    assert tool_schemas([WEATHER, FLAT_NO_SCHEMA]) == {
        "get_weather": WEATHER["function"]["parameters"],
        "ping": None,
    }


def test_a_call_that_fits_its_schema_is_valid_from_a_json_string_or_an_object():
    for arguments in ('{"city": "Oslo", "unit": "c"}', {"city": "Oslo"}):
        assert check_tool_call([WEATHER], "get_weather", arguments) == (True, True, True, None)


def test_schema_violations_name_the_argument():
    check = check_tool_call([WEATHER], "get_weather", {"city": "Oslo", "unit": "k"})
    assert check.schema_valid is False and check.problem.startswith("unit:")
    missing = check_tool_call([WEATHER], "get_weather", {})
    assert missing.schema_valid is False and "'city' is a required property" in missing.problem


def test_a_tool_that_was_not_offered_is_reported_with_the_offered_ones():
    check = check_tool_call([WEATHER], "get_wether", {"city": "Oslo"})
    assert check.name_offered is False and check.schema_valid is None
    assert "get_weather" in check.problem


def test_unparsable_arguments_are_not_schema_checked():
    for arguments in ('{"city": ', "[1, 2]"):
        check = check_tool_call([WEATHER], "get_weather", arguments)
        assert (check.name_offered, check.arguments_parse, check.schema_valid) == (True, False, None)


def test_an_invalid_schema_is_reported_and_the_call_judged_on_its_name():
    check = check_tool_call([BROKEN], "broken", {"x": 1})
    assert (check.name_offered, check.arguments_parse, check.schema_valid) == (True, True, None)
    assert "invalid JSON Schema" in check.problem


def test_a_tool_without_parameters_accepts_any_object():
    assert check_tool_call([FLAT_NO_SCHEMA], "ping", "") == (True, True, None, None)


def test_a_schema_whose_ref_cannot_be_resolved_is_reported_not_raised():
    """Tools come from production traffic: a `$ref` to nowhere, to a remote document (never
    fetched) or to itself without end shows only when a call is validated, and must not fail
    the landing of the trace file that holds it."""
    for parameters in ({"$ref": "#/definitions/missing"}, {"$ref": "http://127.0.0.1:9/x.json"}, {"$ref": "#"}):
        check = check_tool_call([{"name": "t", "parameters": parameters}], "t", {"a": 1})
        assert (check.name_offered, check.arguments_parse, check.schema_valid) == (True, True, None), parameters
        assert "invalid JSON Schema" in check.problem
