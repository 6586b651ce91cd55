"""The Kimi K2.5 chat format: render a conversation to prompt text, and parse generated text back.

A rendered conversation is one string with no newlines between turns (docs/chat.md has one example
per feature):

    <|im_system|>tool_declare<|im_middle|># Tools ...<|im_end|>         only when tools are given
    <|im_system|>system<|im_middle|>You are Kimi, ...<|im_end|>         when messages[0] is not system
    <|im_user|>user<|im_middle|>What is 2+2?<|im_end|>
    <|im_assistant|>assistant<|im_middle|><think></think>4<|im_end|>    history: reasoning dropped
    <|im_assistant|>assistant<|im_middle|><think>                      generation prompt

Special tokens appear as their literal text. The tokenizer turns them into ids, because the hub
tokenizer encodes with allowed_special="all" [K25 §4.1]. Each media item renders one `<|media_pad|>`,
and the caller expands it to the item's token count [K25 §5.3].

Sources: [K25 §4.3, §4.4, §5.3] and [SWARM §2.1] (docs/references.md). The verbatim K2.5
chat_template.jinja was never retrieved. docs/chat.md lists which rules are verified and which are
inferred.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from k25ref.errors import PromptError

# ----------------------------------------------------------------------------
# the special tokens of the format, as text [K25 §4.3]

IM_SYSTEM, IM_USER, IM_ASSISTANT = "<|im_system|>", "<|im_user|>", "<|im_assistant|>"
IM_MIDDLE, IM_END = "<|im_middle|>", "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
MEDIA_BEGIN, MEDIA_CONTENT, MEDIA_PAD, MEDIA_END = (
    "<|media_begin|>", "<|media_content|>", "<|media_pad|>", "<|media_end|>")
VIDEO_PLACEHOLDER = "<|kimi_k25_video_placeholder|>"  # text, replaced by chunk prompts [K25 §5.3]
SECTION_BEGIN, SECTION_END = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CALL_BEGIN, ARGUMENT_BEGIN, CALL_END = (
    "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>")
# production parsers also see the singular spellings from the model [SWARM §2.1]
SECTION_BEGINS = (SECTION_BEGIN, "<|tool_call_section_begin|>")
SECTION_ENDS = (SECTION_END, "<|tool_call_section_end|>")

DEFAULT_SYSTEM_PROMPT = "You are Kimi, an AI assistant created by Moonshot AI."
IMAGE_PROMPT = f"{MEDIA_BEGIN}image{MEDIA_CONTENT}{MEDIA_PAD}{MEDIA_END}\n"
VIDEO_CHUNK_PROMPT = f"{MEDIA_BEGIN}video{MEDIA_CONTENT}{MEDIA_PAD}{MEDIA_END}"  # after "{HH:MM:SS.mmm}"
_TIMESTAMP = re.compile(r"[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}")


# ----------------------------------------------------------------------------
# messages -> prompt text


def render(messages, tools=None, thinking=True, add_generation_prompt=True) -> str:
    """Render OpenAI-style messages as the K2.5 prompt text, rule for rule like the hub template.

        [tool_declare turn]  [default system turn]  turn(m) for m in messages  [assistant header + think]

    Assistant turns up to the last assistant that made no tool call are history: `<think></think>`.
    Later assistant turns belong to the open tool-call loop and keep `<think>{reasoning_content}</think>`,
    unless thinking=False, which empties them too (inferred; docs/chat.md). The generation prompt ends in
    `<think>` (thinking on) or `<think></think>` (instant mode).

    Same as: tokenizer.apply_chat_template(messages, tools=tools, thinking=thinking,
    add_generation_prompt=add_generation_prompt, tokenize=False) for moonshotai/Kimi-K2.5.
    """
    _check_messages(messages)
    history_end = _last_plain_assistant(messages) + 1  # messages[:history_end] lose their reasoning
    turns = []
    if tools:
        turns.append(_turn(IM_SYSTEM, "tool_declare", _tool_declaration(tools)))
    if messages[0]["role"] != "system":
        turns.append(_turn(IM_SYSTEM, "system", DEFAULT_SYSTEM_PROMPT))
    for i, message in enumerate(messages):
        keep_reasoning = thinking and i >= history_end
        turns.append(_render_message(message, f"messages[{i}]", keep_reasoning))
    if add_generation_prompt:
        turns.append(f"{IM_ASSISTANT}assistant{IM_MIDDLE}" + (THINK_OPEN if thinking else THINK_OPEN + THINK_CLOSE))
    return "".join(turns)


def _check_messages(messages):
    if not isinstance(messages, (list, tuple)) or not messages:
        raise PromptError(f"messages must be a non-empty list of dicts, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise PromptError(f"messages[{i}] must be a dict with a str 'role', got {m!r:.80}")


def _last_plain_assistant(messages) -> int:
    """Index of the last assistant message without tool_calls, -1 if none (the template's `ns`)."""
    plain = [i for i, m in enumerate(messages) if m["role"] == "assistant" and not m.get("tool_calls")]
    return plain[-1] if plain else -1


def _turn(marker, name, body) -> str:
    return f"{marker}{name}{IM_MIDDLE}{body}{IM_END}"


def _render_message(message, where, keep_reasoning) -> str:
    """One turn: role marker, name (message['name'] or the role), body, <|im_end|>."""
    role = message["role"]
    marker = {"user": IM_USER, "assistant": IM_ASSISTANT}.get(role, IM_SYSTEM)  # system, tool, ...
    body = _render_content(message.get("content"), where)
    if role == "assistant":
        reasoning = message.get("reasoning_content") or ""  # None renders as "" (the template would print None)
        if not isinstance(reasoning, str):
            raise PromptError(f"{where}.reasoning_content must be a str or None, got {type(reasoning).__name__}")
        reasoning = reasoning if keep_reasoning else ""
        body = f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{body}"
        if message.get("tool_calls"):
            body += format_tool_calls(message["tool_calls"], where=f"{where}.tool_calls")
    elif role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise PromptError(f"{where} (role 'tool') needs the str 'tool_call_id' of the call it answers")
        body = f"## Return of {call_id}\n{body}"
    return _turn(marker, message.get("name") or role, body)


def _render_content(content, where) -> str:
    """A str as is; a list of parts part by part; None as nothing."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, (list, tuple)):
        raise PromptError(f"{where}.content must be a str, a list of parts or None, got {type(content).__name__}")
    return "".join(_render_part(part, f"{where}.content[{j}]") for j, part in enumerate(content))


def _render_part(part, where) -> str:
    if not isinstance(part, dict):
        raise PromptError(f"{where} must be a dict like {{'type': 'text', 'text': ...}}, got {part!r:.60}")
    kind = part.get("type")
    if kind == "image" or "image" in part or "image_url" in part:  # the template's image test
        return IMAGE_PROMPT
    if kind == "video" or "video" in part or "video_url" in part:
        return _render_video(part.get("timestamps"), where)
    if not isinstance(part.get("text"), str):
        raise PromptError(f"{where} (type {kind!r}) is not text, image or video: it needs a str 'text'")
    return part["text"]


def _render_video(timestamps, where) -> str:
    """One chunk prompt per chunk, in order; without timestamps the text placeholder [K25 §5.3].

        {HH:MM:SS.mmm}<|media_begin|>video<|media_content|><|media_pad|><|media_end|>   per chunk
    """
    if timestamps is None:
        return VIDEO_PLACEHOLDER
    if not isinstance(timestamps, (list, tuple)) or not timestamps:
        raise PromptError(f"{where}.timestamps must be a non-empty list of 'HH:MM:SS.mmm' strings")
    for k, ts in enumerate(timestamps):
        if not isinstance(ts, str) or not _TIMESTAMP.fullmatch(ts):
            raise PromptError(f"{where}.timestamps[{k}] = {ts!r} is not 'HH:MM:SS.mmm' (e.g. '00:00:02.000')")
    return "".join(ts + VIDEO_CHUNK_PROMPT for ts in timestamps)


def _tool_declaration(tools) -> str:
    """The tool_declare body: the TypeScript declaration, or the tools as JSON when it comes out empty.

    The hub tokenizer deep-sorts the tools and passes `tools_ts_str`; the template falls back to
    `tools | tojson` when that string is empty (no tool of type 'function').
    """
    declaration = tools_to_typescript(tools)
    return declaration or json.dumps(_deep_sort(tools), ensure_ascii=False)


# ----------------------------------------------------------------------------
# tool calls -> model text [SWARM §2.1]


def format_tool_calls(calls, *, where="calls") -> str:
    """Write tool calls the way the model emits them (no newlines anywhere):

        <|tool_calls_section_begin|>
          <|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|>
          ... one block per call ...
        <|tool_calls_section_end|>

    Each call is an OpenAI-style dict {"id", "type": "function", "function": {"name", "arguments"}}
    or a parsed ToolCall. String arguments are written verbatim, dicts as json.dumps (the template's
    tojson). A dict without an id gets `functions.{name}:{position}`: the hub template would write an
    empty id, which the model never saw in training. `where` names the calls in error messages.
    """
    if not calls:
        return ""
    if not isinstance(calls, (list, tuple)):
        raise PromptError(f"{where} must be a list of tool calls, got {type(calls).__name__}")
    blocks = (_format_call(call, i, f"{where}[{i}]") for i, call in enumerate(calls))
    return SECTION_BEGIN + "".join(blocks) + SECTION_END


def _format_call(call, position, where) -> str:
    if isinstance(call, ToolCall):
        call_id = call.id
        arguments = call.raw_arguments if call.raw_arguments else json.dumps(call.arguments, ensure_ascii=False)
    elif isinstance(call, dict) and isinstance(call.get("function"), dict):
        function = call["function"]
        name, arguments = function.get("name"), function.get("arguments")
        if not isinstance(name, str) or not name:
            raise PromptError(f"{where}.function.name must be a non-empty str, got {name!r}")
        if not isinstance(arguments, (str, dict)):
            raise PromptError(f"{where}.function.arguments must be a JSON str or a dict, got {arguments!r:.60}")
        call_id = call.get("id") or f"functions.{name}:{position}"
        if not isinstance(call_id, str):
            raise PromptError(f"{where}.id must be a str like 'functions.{name}:{position}', got {call_id!r}")
        if isinstance(arguments, dict):
            arguments = json.dumps(arguments, ensure_ascii=False)
    else:
        raise PromptError(f"{where} must be a ToolCall or a dict with a 'function' dict, got {call!r:.80}")
    return f"{CALL_BEGIN}{call_id}{ARGUMENT_BEGIN}{arguments}{CALL_END}"


# ----------------------------------------------------------------------------
# tool schemas -> TypeScript-style declaration (the hub's tool_declaration_ts.py, as functions)

_INDENT = "  "
# constraints shown as comments, per plain type (only scalars and arrays; keys listed sorted)
_CONSTRAINTS = {"string": ("maxLength", "minLength", "pattern"), "number": ("maximum", "minimum"),
                "integer": ("maximum", "minimum"), "array": ("maxItems", "minItems")}
_UNION_NAMES = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean",
                "null": "null", "object": "{}", "array": "Array<any>"}
_ENUM_TYPES = {"string": str, "number": (int, float), "integer": int, "boolean": bool}


def tools_to_typescript(tools) -> str:
    """Declare OpenAI-style tools as one TypeScript namespace, the text K2.5 reads in tool_declare:

        # Tools

        ## functions
        namespace functions {
        // Get the weather.                        <- the function's description
        type get_weather = (_: {
          // City name.                            <- a parameter's description, then its constraints
          city: string,                            <- required parameters first, each group sorted
          // Default: "celsius"
          unit?: "celsius" | "fahrenheit"          <- optional: '?'; enum: union of literals
        }) => any;
        }

    integer becomes number; arrays become Array<T>; nested objects indent by two spaces; `$defs`
    become `interface NAME {...}` lines before the type; additionalProperties becomes `[k: string]: T`.
    Tools whose type is not 'function' are skipped; with none left the result is "".
    """
    if not tools:
        return ""
    if not isinstance(tools, (list, tuple)) or not all(isinstance(t, dict) for t in tools):
        raise PromptError("tools must be a list of dicts like {'type': 'function', 'function': {...}}")
    functions = [_function_ts(t["function"], f"tools[{i}].function") for i, t in enumerate(_deep_sort(tools))
                 if t.get("type") == "function" and t.get("function")]
    if not functions:
        return ""
    return "# Tools\n\n## functions\nnamespace functions {\n" + "\n".join(functions) + "\n}\n"


def _deep_sort(obj):
    """Dict keys sorted at every depth, as the hub tokenizer does before declaring tools."""
    if isinstance(obj, dict):
        return {k: _deep_sort(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_deep_sort(v) for v in obj]
    return obj


def _function_ts(function, where) -> str:
    """[interfaces of $defs]  [// description]  type NAME = (_: {parameters}) => any;"""
    if not isinstance(function, dict):
        raise PromptError(f"{where} must be a dict with 'name', 'description', 'parameters'")
    params = function.get("parameters") or {}
    if not isinstance(params, dict):
        raise PromptError(f"{where}.parameters must be a JSON schema dict, got {params!r:.60}")
    defs = {}
    self_ref = _collect_defs(params, defs, where, root=True)
    lines = []
    if self_ref:  # the root refers to itself ("$ref": "#"): an interface named parameters, fields in key
        fields = ",\n".join(_field_ts(n, s, n not in params.get("required", []), _INDENT, defs, where)
                            for n, s in (params.get("properties") or {}).items())  # order, not required-first
        lines.append("interface parameters {" + (f"\n{fields}\n" if fields else "") + "}")
    for name, schema in defs.items():
        description = schema.get("description") if isinstance(schema, dict) else None
        head = _comment(description, "") + "\n" if description else ""
        lines.append(f"{head}interface {name} {_type_ts(schema, '', defs, where)}")
    if function.get("description"):
        lines.append(_comment(function["description"], ""))
    signature = "parameters" if self_ref else _object_ts(params, "", defs, where)
    lines.append(f"type {function.get('name', 'function')} = (_: {signature}) => any;")
    return "\n".join(lines)


def _kind(schema, where) -> str:
    """Which TypeScript shape a JSON schema takes, tested in the hub encoder's order."""
    if isinstance(schema, bool):
        return "any" if schema else "null"
    if not isinstance(schema, dict):
        raise PromptError(f"{where}: a JSON schema must be a dict or a bool, got {schema!r:.60}")
    if "$ref" in schema:
        return "ref"
    if "anyOf" in schema:
        return "anyOf"
    if "enum" in schema:
        return "enum"
    if "type" in schema:
        t = schema["type"]
        return "union" if isinstance(t, list) else t if t in ("object", "array") else "scalar"
    if not schema:
        return "any"
    raise PromptError(f"{where}: JSON schema {schema!r:.60} has no type, enum, anyOf or $ref")


def _collect_defs(schema, defs, where, root=False) -> bool:
    """Register every `$defs` on the parameters' parse path; True if it holds a self reference "#"."""
    kind = "object" if root else _kind(schema, where)
    if kind == "ref":
        return schema["$ref"] == "#"
    children = []
    if kind == "object":
        defs.update(schema.get("$defs") or {})
        children = list((schema.get("properties") or {}).values())
        children += [schema["additionalProperties"]] if isinstance(schema.get("additionalProperties"), dict) else []
    elif kind == "array":
        children = [schema.get("items") or True]
    elif kind == "anyOf":
        children = schema["anyOf"]
    return any([_collect_defs(c, defs, where) for c in children])  # a list: visit every child


def _type_ts(schema, indent, defs, where) -> str:
    kind = _kind(schema, where)
    if kind == "ref":
        return _ref_name(schema["$ref"], defs, where)
    if kind == "anyOf":
        return " | ".join(_type_ts(s, indent, defs, where) for s in schema["anyOf"])
    if kind == "enum":
        _check_enum(schema, where)  # also checks that enum is a list
        return " | ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in schema["enum"])
    if kind == "union":
        unknown = [t for t in schema["type"] if not isinstance(t, str) or t not in _UNION_NAMES]
        if unknown:
            raise PromptError(f"{where}: unknown JSON schema type(s) {unknown} in {schema['type']}")
        return " | ".join(_UNION_NAMES[t] for t in schema["type"])
    if kind == "object":
        return _object_ts(schema, indent, defs, where)
    if kind == "array":
        return _array_ts(schema, indent, defs, where)
    if kind in ("any", "null"):
        return kind
    return "number" if schema["type"] == "integer" else str(schema["type"])


def _object_ts(schema, indent, defs, where) -> str:
    """{ required fields (sorted), optional fields (sorted), [k: string]: T }, one field per line."""
    props = schema.get("properties") or {}
    required = set(schema.get("required", []))
    fields = [_field_ts(n, props[n], n not in required, indent + _INDENT, defs, where)
              for n in sorted(props, key=lambda n: (n not in required, n))]
    extra = schema.get("additionalProperties")
    if extra is not None:
        if isinstance(extra, dict):
            shown = _type_ts(extra, indent + _INDENT, defs, where)
        elif isinstance(extra, bool):
            shown = "any" if extra else "never"
        else:
            raise PromptError(f"{where}: additionalProperties must be a bool or a schema, got {extra!r:.60}")
        fields.append(f"{indent}{_INDENT}[k: string]: {shown}")
    return "{\n" + ",\n".join(fields) + f"\n{indent}}}" if fields else "{}"


def _array_ts(schema, indent, defs, where) -> str:
    """Array<T>; when the item type has comments, they go on their own lines inside Array<...>."""
    items = schema.get("items") or True  # no (or empty) items: Array<any>
    doc = _doc_ts(items, indent + _INDENT)
    if doc:
        return f"Array<\n{doc}{indent}{_INDENT}{_type_ts(items, indent + _INDENT, defs, where)}\n{indent}>"
    return f"Array<{_type_ts(items, indent, defs, where)}>"


def _field_ts(name, schema, optional, indent, defs, where) -> str:
    """// description / // constraints / // Default: value, then `name?: type`."""
    doc = _doc_ts(schema, indent)
    default = schema.get("default") if isinstance(schema, dict) else None
    if default is not None:
        shown = repr(default) if isinstance(default, (int, float, bool)) else json.dumps(default, ensure_ascii=False)
        doc += f"{indent}// Default: {shown}\n"
    return f"{doc}{indent}{name}{'?' if optional else ''}: {_type_ts(schema, indent, defs, f'{where}.{name}')}"


def _doc_ts(schema, indent) -> str:
    """The comment lines a schema contributes: its description, then its constraints ('k: v', sorted)."""
    if not isinstance(schema, dict):
        return ""
    lines = [_comment(schema["description"], indent)] if schema.get("description") else []
    plain = isinstance(schema.get("type"), str) and not {"$ref", "anyOf", "enum"} & schema.keys()
    shown = [f"{k}: {schema[k]}" for k in _CONSTRAINTS.get(schema["type"], ()) if k in schema] if plain else []
    lines += [f"{indent}// " + ", ".join(shown)] if shown else []
    return "".join(line + "\n" for line in lines)


def _comment(text, indent) -> str:
    """Every line becomes `// line`; empty lines stay empty."""
    return "\n".join(f"{indent}// {line}" if line else "" for line in str(text).split("\n"))


def _ref_name(ref, defs, where) -> str:
    if ref == "#":
        return "parameters"
    name = ref.split("/")[-1] if isinstance(ref, str) and ref.startswith("#/$defs/") else None
    if name is None or name not in defs:
        raise PromptError(f"{where}: $ref {ref!r} is not '#' or a '#/$defs/NAME' that the schema defines")
    return name


def _check_enum(schema, where):
    """Enum values must match a declared scalar type (one type, or one type plus null)."""
    if not isinstance(schema["enum"], list):
        raise PromptError(f"{where}: enum must be a list, got {schema['enum']!r:.60}")
    t = schema.get("type")
    if isinstance(t, list):
        if len(t) == 1 or (len(t) == 2 and "null" in t):
            t = t[1] if t[0] == "null" and len(t) == 2 else t[0]
        else:
            raise PromptError(f"{where}: enum with type {t} is not supported (one type, optionally with null)")
    want = _ENUM_TYPES.get(t) if isinstance(t, str) else None
    bad = [v for v in schema["enum"] if v is not None and want and not isinstance(v, want)]
    if bad:
        raise PromptError(f"{where}: enum values {bad} are not of type {t!r}")


# ----------------------------------------------------------------------------
# generated text -> reasoning, content, tool calls

_CALL_ID = re.compile(r"functions\.(.+):([0-9]{1,18})")
_SECTION_STARTS = re.compile("|".join(map(re.escape, SECTION_BEGINS)))
_NEXT_IN_SECTION = re.compile("|".join(map(re.escape, (CALL_BEGIN,) + SECTION_ENDS)))
_CALL_BOUNDARIES = (CALL_END, CALL_BEGIN) + SECTION_ENDS  # where a call's id or arguments must stop
_CALL_BOUNDARY = re.compile("|".join(map(re.escape, _CALL_BOUNDARIES)))
_JSON = json.JSONDecoder(strict=False)  # strict=False: raw newlines inside strings are kept, not fatal


@dataclass(frozen=True)
class ToolCall:
    """One parsed call. `arguments` is the decoded JSON object, or None with `error` saying why."""
    id: str                      # as generated, e.g. "functions.get_weather:0"
    name: str                    # "get_weather"
    index: int | None            # 0; None when the id carries no ":IDX"
    arguments: dict | None       # {"city": "Paris"}
    raw_arguments: str           # the text between <|tool_call_argument_begin|> and <|tool_call_end|>
    error: str | None = None


@dataclass(frozen=True)
class AssistantOutput:
    """What one generated assistant turn says. `problems` lists every repair parse_output made."""
    reasoning: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    problems: tuple[str, ...] = ()

    def to_message(self) -> dict:
        """The OpenAI-style assistant message to append to the conversation for the next render.

        Arguments keep their raw text, so the re-rendered turn repeats what the model wrote.
        """
        message = {"role": "assistant", "content": self.content, "reasoning_content": self.reasoning}
        if self.tool_calls:
            message["tool_calls"] = [{"id": c.id, "type": "function",
                                      "function": {"name": c.name, "arguments": c.raw_arguments}}
                                     for c in self.tool_calls]
        return message


def parse_output(text, thinking=True) -> AssistantOutput:
    """Split generated text (what follows the generation prompt) into reasoning, content and tool calls.

        [<think>] reasoning </think> content
        [<|tool_calls_section_begin|> call* <|tool_calls_section_end|>] [<|im_end|>]

    thinking says how the prompt ended: with `<think>` (True: text up to </think> is reasoning) or with
    `<think></think>` (False: all of it is content). A leading `<think>` in the text is accepted either
    way. Arguments are read with a JSON decoder, so braces and `<|...|>` inside JSON strings are safe.
    Never raises for a str: everything it repairs is listed in `problems`, and a call whose arguments
    are not a JSON object gets `error` while the other calls still parse.
    """
    if not isinstance(text, str):
        raise PromptError(f"parse_output needs the generated text as a str, got {type(text).__name__}")
    problems = []
    text = _cut_at_stop(text, problems)
    reasoning, rest = _split_reasoning(text, thinking, problems)
    content, calls = _split_tool_calls(rest, problems)
    return AssistantOutput(reasoning, content, tuple(calls), tuple(problems))


class ReplySplitter:
    """parse_output's reasoning/content split for a reply that arrives in pieces (streaming): feed text as it
    is decoded, get back ("reasoning" | "content", text) pieces as soon as they are certain. A tail that may be
    the start of </think> waits for the next piece; leading whitespace of each part is dropped, as the
    stripped parse_output fields would be."""

    def __init__(self, thinking=True):
        self.part, self.pending, self.started = ("reasoning" if thinking else "content"), "", False

    def feed(self, text) -> list[tuple[str, str]]:
        self.pending += text
        out = []
        if self.part == "reasoning" and THINK_CLOSE in self.pending:
            before, self.pending = self.pending.split(THINK_CLOSE, 1)
            out += self._emit(before)
            self.part, self.started = "content", False
        keep = 0
        if self.part == "reasoning":               # the longest tail that begins </think>
            keep = next((k for k in range(len(THINK_CLOSE) - 1, 0, -1) if self.pending.endswith(THINK_CLOSE[:k])), 0)
        ready, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out + self._emit(ready)

    def close(self) -> list[tuple[str, str]]:
        """The held-back tail, at the end of the reply."""
        rest, self.pending = self.pending, ""
        return self._emit(rest)

    def _emit(self, text):
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        return [(self.part, text)] if text else []


def _cut_at_stop(text, problems) -> str:
    """Generation stops at <|im_end|> [K25 §4.3]: drop it and anything after it."""
    stop = text.find(IM_END)
    if stop < 0:
        return text
    if text[stop + len(IM_END):].strip():
        problems.append(f"ignored {len(text) - stop - len(IM_END)} chars after <|im_end|>")
    return text[:stop]


def _split_reasoning(text, thinking, problems) -> tuple[str, str]:
    """Reasoning ends at </think>, or at a tool-call section that opens before any </think> [SWARM §2.1]."""
    if text.startswith(THINK_OPEN):
        text = text[len(THINK_OPEN):]
    elif not thinking:
        return "", text
    close = text.find(THINK_CLOSE)
    section, _ = _find_first(_SECTION_STARTS, text, 0)
    if section >= 0 and (close < 0 or section < close):
        problems.append("a tool-call section began inside the reasoning (no </think> before it)")
        return text[:section], text[section:]
    if close < 0:
        problems.append("no </think>: the text ended inside the reasoning")
        return text, ""
    return text[:close], text[close + len(THINK_CLOSE):]


def _split_tool_calls(text, problems) -> tuple[str, list]:
    """Content is the text outside tool-call sections; every section's calls are collected in order."""
    content, calls, pos, sections = [], [], 0, 0
    while True:
        start, begin = _find_first(_SECTION_STARTS, text, pos)
        outside = text[pos:] if start < 0 else text[pos:start]
        if sections and outside.strip():
            problems.append(f"text after a tool-call section kept as content: {outside[:40]!r}")
        if not sections or outside.strip():  # whitespace between or after sections is layout, not content
            content.append(outside)
        if start < 0:
            return "".join(content), calls
        sections += 1
        if sections > 1:
            problems.append("more than one tool-call section")
        if begin != SECTION_BEGIN:
            problems.append(f"singular section marker {begin}")
        pos = _parse_section(text, start + len(begin), calls, problems)


def _parse_section(text, pos, calls, problems) -> int:
    """Read calls until the section end marker; return the position after the section."""
    while True:
        pos = _skip_space(text, pos)
        if pos == len(text):
            problems.append("the tool-call section is not closed (no <|tool_calls_section_end|>)")
            return pos
        end = next((m for m in SECTION_ENDS if text.startswith(m, pos)), None)
        if end is not None:
            if end != SECTION_END:
                problems.append(f"singular section marker {end}")
            return pos + len(end)
        if text.startswith(CALL_BEGIN, pos):
            call, pos = _parse_call(text, pos + len(CALL_BEGIN), len(calls), problems)
            calls.append(call)
            continue
        junk_end, _ = _find_first(_NEXT_IN_SECTION, text, pos)
        junk_end = len(text) if junk_end < 0 else junk_end
        problems.append(f"skipped text inside the tool-call section: {text[pos:junk_end][:40]!r}")
        pos = junk_end


def _parse_call(text, pos, number, problems) -> tuple[ToolCall, int]:
    """`id <|tool_call_argument_begin|> json <|tool_call_end|>`, starting after <|tool_call_begin|>."""
    boundary, _ = _find_first(_CALL_BOUNDARY, text, pos)
    boundary = len(text) if boundary < 0 else boundary
    marker = text.find(ARGUMENT_BEGIN, pos, boundary)
    if marker < 0:  # no arguments at all
        call_id = text[pos:boundary].strip()
        name, index = _split_id(call_id, number, problems)
        error = "no <|tool_call_argument_begin|> before the call ended"
        problems.append(f"call {number} ({call_id!r}): {error}")
        return ToolCall(call_id, name, index, None, "", error), _after_call_end(text, boundary, number, problems)
    call_id = text[pos:marker].strip()
    name, index = _split_id(call_id, number, problems)
    arguments, raw, error, end = _read_arguments(text, marker + len(ARGUMENT_BEGIN))
    if error:
        problems.append(f"call {number} ({call_id!r}): {error}")
    return ToolCall(call_id, name, index, arguments, raw, error), _after_call_end(text, end, number, problems)


def _read_arguments(text, pos) -> tuple[dict | None, str, str | None, int]:
    """Decode one JSON value from pos; return (object or None, raw text, error, where the call ends)."""
    start = _skip_space(text, pos)
    try:
        value, after = _JSON.raw_decode(text, start)
    except (json.JSONDecodeError, RecursionError) as e:  # very deep nesting recurses
        reason = f"at char {e.pos - pos}: {e.msg}" if isinstance(e, json.JSONDecodeError) else "(nested too deeply)"
        end, _ = _find_first(_CALL_BOUNDARY, text, pos)
        end = len(text) if end < 0 else end
        return None, text[pos:end], f"arguments are not valid JSON {reason}", end
    end = _skip_space(text, after)
    if end < len(text) and not text.startswith(_CALL_BOUNDARIES, end):
        stop, _ = _find_first(_CALL_BOUNDARY, text, end)
        stop = len(text) if stop < 0 else stop
        return None, text[pos:stop], f"text after the JSON arguments: {text[end:stop][:40]!r}", stop
    if not isinstance(value, dict):
        return None, text[pos:end], f"arguments are JSON but not an object ({type(value).__name__})", end
    return value, text[pos:end], None, end


def _after_call_end(text, pos, number, problems) -> int:
    if text.startswith(CALL_END, pos):
        return pos + len(CALL_END)
    problems.append(f"call {number} has no <|tool_call_end|>")
    return pos


def _split_id(call_id, number, problems) -> tuple[str, int | None]:
    """functions.NAME:IDX -> (NAME, IDX). Other ids are kept, with a best-effort name, and reported."""
    match = _CALL_ID.fullmatch(call_id)
    if match:
        return match[1], int(match[2])
    problems.append(f"call {number}: id {call_id!r} does not follow functions.NAME:IDX")
    head, colon, tail = call_id.rpartition(":")
    if colon and re.fullmatch(r"[0-9]{1,18}", tail):
        return head.removeprefix("functions."), int(tail)
    return call_id.removeprefix("functions."), None


def _find_first(markers, text, pos) -> tuple[int, str | None]:
    """The earliest marker at or after pos: (position, marker), or (-1, None).

    One regex search stops at the nearest marker, so reading many calls stays linear in the text.
    """
    found = markers.search(text, pos)
    return (found.start(), found.group()) if found else (-1, None)


def _skip_space(text, pos) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos
