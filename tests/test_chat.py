"""The K2.5 chat format: exact rendered strings, tool-call round trips, and a parser that never raises.

The expected strings are written out by hand from the rules in docs/chat.md ([K25 §4.4]).
"""
import json
import os

import pytest
from hypothesis import given, settings, strategies as st

from k25ref.chat import (DEFAULT_SYSTEM_PROMPT, AssistantOutput, ToolCall, format_tool_calls, parse_output,
                         render, tools_to_typescript)
from k25ref.errors import PromptError

SYS = f"<|im_system|>system<|im_middle|>{DEFAULT_SYSTEM_PROMPT}<|im_end|>"
GEN = "<|im_assistant|>assistant<|im_middle|><think>"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": "City name, e.g. Paris."},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}}}}}
WEATHER_TS = ("# Tools\n\n## functions\nnamespace functions {\n// Get the current weather for a city.\n"
              "type get_weather = (_: {\n  // City name, e.g. Paris.\n  city: string,\n"
              "  // Default: \"celsius\"\n  unit?: \"celsius\" | \"fahrenheit\"\n}) => any;\n}\n")


def call(name, index, arguments):
    return {"id": f"functions.{name}:{index}", "type": "function", "function": {"name": name, "arguments": arguments}}


# ----------------------------------------------------------------------------
# render


def test_default_system_prompt_is_inserted_when_the_first_message_is_not_system():
    got = render([{"role": "user", "content": "hi, who are you?"}])
    assert got == SYS + "<|im_user|>user<|im_middle|>hi, who are you?<|im_end|>" + GEN


def test_own_system_prompt_replaces_the_default_and_no_generation_prompt_on_request():
    got = render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
                 add_generation_prompt=False)
    assert got == "<|im_system|>system<|im_middle|>Be brief.<|im_end|><|im_user|>user<|im_middle|>2+2?<|im_end|>"


def test_history_turns_lose_their_reasoning():
    messages = [{"role": "user", "content": "2+2?"},
                {"role": "assistant", "reasoning_content": "add them", "content": "4"},
                {"role": "user", "content": "and 3+3?"}]
    assert render(messages) == (
        SYS + "<|im_user|>user<|im_middle|>2+2?<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|><think></think>4<|im_end|>"
        "<|im_user|>user<|im_middle|>and 3+3?<|im_end|>" + GEN)


def test_the_last_plain_assistant_turn_is_history_too():
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "reasoning_content": "r", "content": "4"}]
    assert render(messages, add_generation_prompt=False).endswith(
        "<|im_assistant|>assistant<|im_middle|><think></think>4<|im_end|>")


def test_tool_loop_keeps_reasoning_and_declares_tools_first():
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "reasoning_content": "I need the weather.", "content": "",
                 "tool_calls": [call("get_weather", 0, '{"city": "Paris"}')]},
                {"role": "tool", "name": "get_weather", "tool_call_id": "functions.get_weather:0",
                 "content": '{"temp": 20}'}]
    assert render(messages, tools=[WEATHER]) == (
        f"<|im_system|>tool_declare<|im_middle|>{WEATHER_TS}<|im_end|>" + SYS +
        "<|im_user|>user<|im_middle|>Weather in Paris?<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|><think>I need the weather.</think>"
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
        '{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|><|im_end|>'
        "<|im_system|>get_weather<|im_middle|>## Return of functions.get_weather:0\n"
        '{"temp": 20}<|im_end|>' + GEN)


def test_a_final_answer_moves_the_whole_tool_loop_into_history():
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "reasoning_content": "LOOP", "content": "",
                 "tool_calls": [call("get_weather", 0, {"city": "Paris"})]},
                {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "20"},
                {"role": "assistant", "reasoning_content": "FINAL", "content": "20 degrees."}]
    got = render(messages, add_generation_prompt=False)
    assert "LOOP" not in got and "FINAL" not in got
    assert "<|im_system|>tool<|im_middle|>## Return of functions.get_weather:0\n20<|im_end|>" in got


def test_thinking_off_ends_in_an_empty_think_and_empties_suffix_reasoning():
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "reasoning_content": "LOOP", "content": "",
                 "tool_calls": [call("get_weather", 0, "{}")]},
                {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "20"}]
    got = render(messages, thinking=False)
    assert got.endswith("<|im_assistant|>assistant<|im_middle|><think></think>")
    assert "LOOP" not in got and "<|im_middle|><think></think><|tool_calls_section_begin|>" in got
    assert "<think>LOOP</think>" in render(messages, thinking=True)


def test_image_parts_render_one_pad_and_a_newline():
    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]
    image = "<|media_begin|>image<|media_content|><|media_pad|><|media_end|>\n"
    assert render(messages) == SYS + f"<|im_user|>user<|im_middle|>{image}What is this?{image}<|im_end|>" + GEN


def test_video_renders_one_chunk_prompt_per_timestamp_or_the_placeholder():
    video = {"type": "video", "timestamps": ["00:00:00.000", "00:00:02.000"]}
    chunk = "<|media_begin|>video<|media_content|><|media_pad|><|media_end|>"
    got = render([{"role": "user", "content": [video, {"type": "text", "text": "Summarize."}]}])
    assert got == SYS + f"<|im_user|>user<|im_middle|>00:00:00.000{chunk}00:00:02.000{chunk}Summarize.<|im_end|>" + GEN
    assert got.count("<|media_pad|>") == 2
    bare = render([{"role": "user", "content": [{"type": "video"}]}], add_generation_prompt=False)
    assert bare == SYS + "<|im_user|>user<|im_middle|><|kimi_k25_video_placeholder|><|im_end|>"


def test_name_replaces_the_role_name():
    got = render([{"role": "user", "name": "ana", "content": "hi"}], add_generation_prompt=False)
    assert got == SYS + "<|im_user|>ana<|im_middle|>hi<|im_end|>"


def test_tools_without_functions_fall_back_to_json():
    plugin = {"type": "_plugin", "_plugin": {"name": "web"}}
    got = render([{"role": "user", "content": "hi"}], tools=[plugin], add_generation_prompt=False)
    declared = '[{"_plugin": {"name": "web"}, "type": "_plugin"}]'  # deep-sorted keys, json.dumps spacing
    assert got.startswith(f"<|im_system|>tool_declare<|im_middle|>{declared}<|im_end|>")


@pytest.mark.parametrize("messages, where", [
    ([], "non-empty"),
    ([{"content": "no role"}], "messages[0]"),
    ([{"role": "tool", "content": "x"}], "messages[0] (role 'tool')"),
    ([{"role": "user", "content": [{"type": "audio"}]}], "messages[0].content[0]"),
    ([{"role": "user", "content": 42}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "video", "timestamps": ["0:00:01"]}]}], "timestamps[0]"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": 3}}]}],
     "messages[0].tool_calls[0].function.arguments"),
])
def test_bad_messages_raise_prompt_error_naming_where(messages, where):
    with pytest.raises(PromptError, match=where.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        render(messages)


# ----------------------------------------------------------------------------
# tools_to_typescript


def test_typescript_declaration_of_a_simple_tool():
    assert tools_to_typescript([WEATHER]) == WEATHER_TS


def test_typescript_nested_objects_arrays_constraints_and_extra_keys():
    tool = {"type": "function", "function": {"name": "book", "parameters": {"type": "object", "properties": {
        "nights": {"type": "integer", "minimum": 1, "maximum": 14},
        "guests": {"type": "array", "items": {"type": "string", "description": "a name"}},
        "where": {"type": "object", "required": ["lon", "lat"], "properties": {
            "lat": {"type": "number"}, "lon": {"type": "number"}}},
        "meta": {"type": "object", "additionalProperties": {"type": "string"}},
        "ids": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
        "note": {"type": ["string", "null"]}}, "required": ["where", "nights"]}}}
    assert tools_to_typescript([tool]) == (
        "# Tools\n\n## functions\nnamespace functions {\ntype book = (_: {\n"
        "  // maximum: 14, minimum: 1\n  nights: number,\n"
        "  where: {\n    lat: number,\n    lon: number\n  },\n"
        "  guests?: Array<\n    // a name\n    string\n  >,\n"
        "  // minItems: 1\n  ids?: Array<number>,\n"
        "  meta?: {\n    [k: string]: string\n  },\n"
        "  note?: string | null\n}) => any;\n}\n")


def test_typescript_defs_become_interfaces_and_self_references_name_the_root():
    defs = {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "required": ["item"], "properties": {"item": {"$ref": "#/$defs/Item"}},
        "$defs": {"Item": {"type": "object", "description": "An item.", "properties": {"sku": {"type": "string"}}}}}}}
    assert tools_to_typescript([defs]) == (
        "# Tools\n\n## functions\nnamespace functions {\n// An item.\ninterface Item {\n  sku?: string\n}\n"
        "type add = (_: {\n  item: Item\n}) => any;\n}\n")
    tree = {"type": "function", "function": {"name": "walk", "parameters": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "kids": {"type": "array", "items": {"$ref": "#"}}}}}}
    assert tools_to_typescript([tree]) == (
        "# Tools\n\n## functions\nnamespace functions {\ninterface parameters {\n"
        "  kids?: Array<parameters>,\n  name?: string\n}\ntype walk = (_: parameters) => any;\n}\n")


def test_typescript_multiline_descriptions_and_skipped_tool_types():
    tool = {"type": "function", "function": {"name": "f", "description": "one\n\ntwo", "parameters": {}}}
    plugin = {"type": "_plugin", "_plugin": {"name": "web"}}
    assert tools_to_typescript([plugin, tool]) == (
        "# Tools\n\n## functions\nnamespace functions {\n// one\n\n// two\ntype f = (_: {}) => any;\n}\n")
    assert tools_to_typescript([plugin]) == "" and tools_to_typescript([]) == ""


@pytest.mark.parametrize("params, where", [
    ({"type": "object", "properties": {"x": {"$ref": "#/$defs/Missing"}}}, r"\$ref"),
    ({"type": "object", "properties": {"x": {"type": "string", "enum": [1, 2]}}}, "enum values"),
    ({"type": "object", "properties": {"x": {"title": "no type"}}}, "no type"),
    ({"type": "object", "properties": {"x": {"type": ["string", "date"]}}}, "unknown JSON schema type"),
])
def test_schemas_the_encoder_cannot_declare_raise_prompt_error(params, where):
    tool = {"type": "function", "function": {"name": "f", "parameters": params}}
    with pytest.raises(PromptError, match=where):
        tools_to_typescript([tool])


# ----------------------------------------------------------------------------
# format_tool_calls and its round trip through parse_output


def test_parallel_tool_calls_are_one_section_without_newlines():
    calls = [call("get_weather", 0, {"city": "Beijing"}), call("get_weather", 1, '{"city": "Shanghai"}')]
    assert format_tool_calls(calls) == (
        "<|tool_calls_section_begin|>"
        '<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Beijing"}<|tool_call_end|>'
        '<|tool_call_begin|>functions.get_weather:1<|tool_call_argument_begin|>{"city": "Shanghai"}<|tool_call_end|>'
        "<|tool_calls_section_end|>")
    assert format_tool_calls([]) == ""


def test_a_call_without_id_gets_functions_name_position():
    text = format_tool_calls([{"function": {"name": "a", "arguments": "{}"}},
                              {"function": {"name": "b", "arguments": {}}}])
    assert "functions.a:0<|tool_call_argument_begin|>{}" in text
    assert "functions.b:1<|tool_call_argument_begin|>{}" in text


json_chars = list('ab {}[]":,\\<|>/é中\n') + ["<|tool_call_end|>", "<|tool_calls_section_end|>", "</think>",
                                              "<|tool_call_begin|>"]
json_text = st.lists(st.sampled_from(json_chars), max_size=8).map("".join)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | json_text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_text, inner, max_size=3),
                           max_leaves=8)
call_dicts = st.builds(lambda name, args, as_str: {"name": name, "arguments": json.dumps(args) if as_str else args},
                       st.from_regex(r"[a-z_][a-z0-9_.]{0,10}", fullmatch=True),
                       st.dictionaries(json_text, json_values, max_size=4), st.booleans())


@settings(max_examples=100, deadline=None)
@given(st.lists(call_dicts, min_size=1, max_size=4))
def test_round_trip_format_then_parse(calls):
    openai_calls = [{"id": f"functions.{c['name']}:{i}", "type": "function", "function": c}
                    for i, c in enumerate(calls)]
    out = parse_output(format_tool_calls(openai_calls), thinking=False)
    assert out.problems == () and out.reasoning == "" and out.content == ""
    assert [(c.name, c.index, c.error) for c in out.tool_calls] == [(c["name"], i, None) for i, c in enumerate(calls)]
    want = [json.loads(c["arguments"]) if isinstance(c["arguments"], str) else c["arguments"] for c in calls]
    assert [c.arguments for c in out.tool_calls] == want
    assert format_tool_calls(list(out.tool_calls)) == format_tool_calls(openai_calls)  # ToolCall writes its raw text


def test_in_thinking_mode_a_bare_section_is_parsed_and_reported():
    out = parse_output(format_tool_calls([call("f", 0, {"x": 1})]))
    assert out.tool_calls[0].arguments == {"x": 1} and out.reasoning == ""
    assert out.problems == ("a tool-call section began inside the reasoning (no </think> before it)",)


# ----------------------------------------------------------------------------
# parse_output on well-formed and malformed generations


def test_reasoning_content_and_stop_token():
    out = parse_output("Add them.</think>4<|im_end|>")
    assert out == AssistantOutput(reasoning="Add them.", content="4")
    assert parse_output("<think>Add them.</think>4") == out  # the prefill may be included


def test_thinking_off_reads_everything_as_content():
    assert parse_output("4, because 2+2</think>", thinking=False) == AssistantOutput("", "4, because 2+2</think>")


def test_missing_think_close_is_all_reasoning():
    out = parse_output("Let me think about this for a wh")
    assert (out.reasoning, out.content, out.problems) == (
        "Let me think about this for a wh", "", ("no </think>: the text ended inside the reasoning",))


def test_text_after_the_stop_token_is_dropped_and_reported():
    out = parse_output("r</think>answer<|im_end|>junk")
    assert out.content == "answer" and out.problems == ("ignored 4 chars after <|im_end|>",)


def test_braces_and_markers_inside_json_strings():
    args = '{"code": "if (a) { b(\\"}\\"); }", "note": "<|tool_call_end|><|tool_calls_section_end|></think>"}'
    text = ("r</think>Checking.<|tool_calls_section_begin|><|tool_call_begin|>functions.run:0"
            f"<|tool_call_argument_begin|>{args}<|tool_call_end|><|tool_calls_section_end|>")
    out = parse_output(text)
    assert out.problems == () and out.content == "Checking." and out.tool_calls[0].raw_arguments == args
    assert out.tool_calls[0].arguments == json.loads(args)


def test_invalid_json_marks_that_call_and_keeps_the_others():
    text = ("</think><|tool_calls_section_begin|>"
            '<|tool_call_begin|>functions.a:0<|tool_call_argument_begin|>{"x": 1<|tool_call_end|>'
            '<|tool_call_begin|>functions.b:1<|tool_call_argument_begin|>{"y": 2}<|tool_call_end|>'
            "<|tool_calls_section_end|>")
    bad, good = parse_output(text).tool_calls
    assert bad.arguments is None and bad.raw_arguments == '{"x": 1'
    assert bad.error.startswith("arguments are not valid JSON at char 7")
    assert good == ToolCall("functions.b:1", "b", 1, {"y": 2}, '{"y": 2}')


def test_unclosed_section_and_call_missing_its_end():
    text = '</think><|tool_calls_section_begin|><|tool_call_begin|>functions.a:0<|tool_call_argument_begin|>{"x": 1}'
    out = parse_output(text)
    assert out.tool_calls == (ToolCall("functions.a:0", "a", 0, {"x": 1}, '{"x": 1}'),)
    assert out.problems == ("call 0 has no <|tool_call_end|>",
                            "the tool-call section is not closed (no <|tool_calls_section_end|>)")


def test_truncated_arguments_are_an_error_not_a_crash():
    out = parse_output('</think><|tool_calls_section_begin|><|tool_call_begin|>functions.a:0'
                       '<|tool_call_argument_begin|>{"x": "ab')
    assert out.tool_calls[0].arguments is None and out.tool_calls[0].raw_arguments == '{"x": "ab'


@pytest.mark.parametrize("call_id, name, index", [
    ("get_weather:3", "get_weather", 3),
    ("functions.get_weather", "get_weather", None),
    ("call_abc", "call_abc", None)])
def test_ids_off_the_convention_are_kept_and_reported(call_id, name, index):
    out = parse_output(f"</think><|tool_calls_section_begin|><|tool_call_begin|>{call_id}"
                       "<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>")
    assert (out.tool_calls[0].id, out.tool_calls[0].name, out.tool_calls[0].index) == (call_id, name, index)
    assert out.problems == (f"call 0: id {call_id!r} does not follow functions.NAME:IDX",)


def test_section_inside_reasoning_singular_markers_and_non_object_arguments():
    text = ("plan<|tool_call_section_begin|><|tool_call_begin|>functions.a:0<|tool_call_argument_begin|>[1, 2]"
            "<|tool_call_end|><|tool_call_section_end|>")
    out = parse_output(text)
    assert out.reasoning == "plan" and out.tool_calls[0].error == "arguments are JSON but not an object (list)"
    assert len(out.problems) == 4  # section in reasoning, two singular markers, the call's error


def test_junk_inside_a_section_and_text_after_it():
    text = ("</think><|tool_calls_section_begin|>oops<|tool_call_begin|>functions.a:0<|tool_call_argument_begin|>{}"
            "<|tool_call_end|><|tool_calls_section_end|>\nlate words")
    out = parse_output(text)
    assert out.tool_calls[0].arguments == {} and out.content == "\nlate words"
    assert out.problems == ("skipped text inside the tool-call section: 'oops'",
                            "text after a tool-call section kept as content: '\\nlate words'")


def test_parse_output_rejects_non_text():
    with pytest.raises(PromptError, match="str"):
        parse_output(b"bytes")


# ----------------------------------------------------------------------------
# parse and render fit together


def test_a_tool_call_turn_re_renders_exactly_as_generated():
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    generated = ("I should look it up.</think><|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
                 '<|tool_call_argument_begin|>{"city":"Paris"}<|tool_call_end|><|tool_calls_section_end|><|im_end|>')
    message = parse_output(generated).to_message()
    assert render(messages, tools=[WEATHER]) + generated == \
        render(messages + [message], tools=[WEATHER], add_generation_prompt=False)


def test_a_final_answer_does_not_re_render_as_generated():
    # the template drops the reasoning of a finished turn, so a finished conversation is no longer a prefix
    messages = [{"role": "user", "content": "2+2?"}]
    generated = "Add.</think>4<|im_end|>"
    message = parse_output(generated).to_message()
    assert render(messages) + generated != render(messages + [message], add_generation_prompt=False)


# ----------------------------------------------------------------------------
# fuzz: parse_output never raises

fragments = st.sampled_from([
    "<think>", "</think>", "<|im_end|>", "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>",
    "<|tool_call_section_begin|>", "<|tool_call_section_end|>", "<|tool_call_begin|>", "<|tool_call_argument_begin|>",
    "<|tool_call_end|>", "functions.f:0", "functions.:", ":99999999999999999999999", "{", "}", "[", "]", '"', "\\",
    '{"a": 1}', "[" * 50, "<|", "|>", " ", "\n", "é", "中", "\x00", "\U0001f600", "１２"])


@pytest.mark.fuzz
@settings(max_examples=int(os.environ.get("K25REF_FUZZ_EXAMPLES", 200)), deadline=None)
@given(st.lists(fragments | st.text(max_size=5), max_size=40).map("".join), st.booleans())
def test_fuzz_parse_output_never_raises(text, thinking):
    out = parse_output(text, thinking=thinking)
    assert isinstance(out, AssistantOutput)
    assert all(isinstance(p, str) for p in out.problems)
    for c in out.tool_calls:
        assert (c.arguments is None) == (c.error is not None)  # a call has decoded arguments or says why not
