"""Which JSON schemas a llama.cpp grammar can hold a reply to, exactly.

llama-cpp-python's `LlamaGrammar.from_json_schema` (what the llama.cpp runtime builds its
grammar with, kaset.runtimes.llama_cpp._grammar) turns a schema into GBNF, but it drops what
it cannot express without a word: `minimum`, `uniqueItems`, `not`, an unknown `format`, the
`properties` next to an `anyOf`, a `minLength` next to a `pattern`... A reply sampled under
such a grammar is valid JSON that may still break the schema. The listing writer accepts that
(it validates afterwards); a client that sent `response_format: json_schema` was promised a
reply that follows its schema, so `unenforceable` finds what the converter would drop and the
API refuses the request, naming it, instead.

This walks the schema the way the converter reads it (llama_grammar.SchemaConverter.visit);
it converts nothing: the grammar is still llama-cpp-python's, with one rule mended (`gbnf`).
"""

from __future__ import annotations

import json
import re
from typing import Any

# llama-cpp-python's converter lets a string hold raw control characters (its `char` rule is
# [^"\\] | escapes), which JSON forbids: a reply with a newline inside a string does not parse.
# llama.cpp's own converter excludes U+0000-U+001F and DEL, and so does the rule put in its place.
_LOOSE_CHAR = re.compile(r'^(char\d*) ::= \[\^"\\\\\] \|', re.MULTILINE)
_JSON_CHAR = r' ::= [^"\\\x7F\x00-\x1F] |'


def gbnf(schema: dict[str, Any]) -> str:
    """The GBNF grammar of `schema`: llama-cpp-python's conversion, its string characters mended."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return _LOOSE_CHAR.sub(lambda rule: rule.group(1) + _JSON_CHAR, json_schema_to_gbnf(json.dumps(schema)))

# Keywords that describe and never constrain.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment",
                          "deprecated", "readOnly", "writeOnly", "$defs", "definitions"})
_OBJECT = frozenset({"properties", "required", "additionalProperties"})
_ARRAY = frozenset({"items", "prefixItems", "minItems", "maxItems"})
_STRING = frozenset({"pattern", "format", "minLength", "maxLength"})
_BY_TYPE = {"object": _OBJECT, "array": _ARRAY, "string": _STRING}
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_ENFORCED = _OBJECT | _ARRAY | _STRING | {"type", "enum", "const", "anyOf", "$ref"}
# The string formats the converter has rules for; any other is dropped.
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})


def unenforceable(schema: Any) -> str | None:
    """Why a grammar cannot hold a reply to `schema` (the first reason, with where), or None."""
    if not isinstance(schema, dict):
        return "the schema must be a JSON object"
    return _node(schema, "#", schema)


def _node(node: Any, path: str, root: dict[str, Any]) -> str | None:
    if not isinstance(node, dict):
        return f"{path} must be a schema object (true/false schemas cannot be enforced)"
    unknown = [key for key in node if key not in _ENFORCED and key not in _ANNOTATIONS]
    if unknown:
        return f"{path}: '{unknown[0]}' cannot be enforced while generating"
    for key in ("$defs", "definitions"):
        defs = node.get(key, {})
        if not isinstance(defs, dict):
            return f"{path}/{key} must be an object of schemas"
        for name, sub in defs.items():
            if (why := _node(sub, f"{path}/{key}/{name}", root)) is not None:
                return why
    constraints = {key for key in node if key in _ENFORCED}
    if not constraints and node.keys() - {"$defs", "definitions"}:
        # The converter takes {} for any object, but fails on a schema of annotations alone.
        return f"{path} has no type: give it one"
    if "$ref" in node:
        return _ref(node["$ref"], constraints, path, root)
    if "anyOf" in node:
        return _any_of(node["anyOf"], constraints, path, root)
    kind = node.get("type")
    if isinstance(kind, list):
        if not kind or any(t not in _TYPES for t in kind):
            return f"{path}/type must name JSON types"
        return _alone("type", constraints, path, "a list of types")
    if kind is not None and kind not in _TYPES:
        return f"{path}/type '{kind}' is not a JSON type"
    if "enum" in node or "const" in node:
        return _constants(node, constraints, path)
    groups = [group for group in (_OBJECT, _ARRAY, _STRING) if constraints & group]
    if kind is not None and groups and groups != [_BY_TYPE.get(kind)]:
        wrong = sorted(constraints - {"type"} - _BY_TYPE.get(kind, frozenset()))
        return f"{path}: '{wrong[0]}' does not apply to type '{kind}'"
    if len(groups) > 1:
        return f"{path} mixes {', '.join(sorted(constraints - {'type'}))}: give it a type"
    if groups == [_OBJECT]:
        return _object(node, path, root)
    if groups == [_ARRAY]:
        return _array(node, path, root)
    if groups == [_STRING]:
        return _string(node, path)
    return None


def _alone(key: str, constraints: set[str], path: str, what: str) -> str | None:
    others = sorted(constraints - {key})
    return f"{path}: '{others[0]}' next to {what} cannot be enforced" if others else None


def _ref(ref: Any, constraints: set[str], path: str, root: dict[str, Any]) -> str | None:
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return f"{path}/$ref must point into this schema ('#/$defs/...')"
    target: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(target, dict) or part not in target:
            return f"{path}/$ref '{ref}' points at nothing"
        target = target[part]
    return _alone("$ref", constraints, path, "$ref")


def _any_of(options: Any, constraints: set[str], path: str, root: dict[str, Any]) -> str | None:
    if not isinstance(options, list) or not options:
        return f"{path}/anyOf must be a non-empty list of schemas"
    for index, option in enumerate(options):
        if (why := _node(option, f"{path}/anyOf/{index}", root)) is not None:
            return why
    return _alone("anyOf", constraints, path, "anyOf")


def _constants(node: dict[str, Any], constraints: set[str], path: str) -> str | None:
    if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
        return f"{path}/enum must be a non-empty list"
    key = "enum" if "enum" in node else "const"
    # A type next to them is harmless only if every value has it: the grammar writes the values as given.
    others = constraints - {key, "type"}
    if others:
        return _alone(key, constraints - {"type"}, path, key)
    kind = node.get("type")
    values = node["enum"] if key == "enum" else [node["const"]]
    if isinstance(kind, str) and any(not _is_type(value, kind) for value in values):
        return f"{path}/{key} holds a value that is not of type '{kind}'"
    return None


def _is_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    python = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}[kind]
    return isinstance(value, python)


def _object(node: dict[str, Any], path: str, root: dict[str, Any]) -> str | None:
    properties = node.get("properties", {})
    if not isinstance(properties, dict):
        return f"{path}/properties must be an object of schemas"
    required = node.get("required", [])
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        return f"{path}/required must be a list of property names"
    missing = [name for name in required if name not in properties]
    if missing:
        # The grammar only writes the properties it is given: a required one it lacks never appears.
        return f"{path}/required names '{missing[0]}', which is not in properties"
    if required and "properties" not in node:
        return f"{path}/required needs properties"
    for name, sub in properties.items():
        if (why := _node(sub, f"{path}/properties/{name}", root)) is not None:
            return why
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        return _node(extra, f"{path}/additionalProperties", root)
    if extra is not None and not isinstance(extra, bool):
        return f"{path}/additionalProperties must be a boolean or a schema"
    return None


def _array(node: dict[str, Any], path: str, root: dict[str, Any]) -> str | None:
    if "items" in node and "prefixItems" in node:
        return f"{path}: items next to prefixItems cannot be enforced"
    items = node.get("items", node.get("prefixItems"))
    if not items:
        return f"{path}: an array needs items with a type (its minItems/maxItems alone cannot be enforced)"
    if isinstance(items, list):
        # A tuple: the grammar writes exactly one item per schema.
        if "minItems" in node or "maxItems" in node:
            return f"{path}: minItems/maxItems next to a tuple of items cannot be enforced"
        for index, item in enumerate(items):
            if (why := _node(item, f"{path}/prefixItems/{index}", root)) is not None:
                return why
        return None
    for key in ("minItems", "maxItems"):
        if key in node and (not isinstance(node[key], int) or isinstance(node[key], bool) or node[key] < 0):
            return f"{path}/{key} must be a non-negative integer"
    return _node(items, f"{path}/items", root)


def _string(node: dict[str, Any], path: str) -> str | None:
    ways: list[str] = [key for key in ("pattern", "format") if key in node]
    if "minLength" in node or "maxLength" in node:
        ways.append("minLength/maxLength")
        if node.get("type") != "string":
            return f"{path}: minLength/maxLength need type 'string'"
    if len(ways) > 1:
        return f"{path}: {ways[0]} and {ways[1]} together cannot be enforced; keep one"
    if "pattern" in node:
        pattern = node["pattern"]
        if not isinstance(pattern, str) or not pattern.startswith("^") or not pattern.endswith("$"):
            return f"{path}/pattern must be anchored ('^...$') to be enforced"
    if "format" in node and node["format"] not in _FORMATS:
        return f"{path}/format '{node['format']}' cannot be enforced (only {', '.join(sorted(_FORMATS))})"
    for key in ("minLength", "maxLength"):
        if key in node and (not isinstance(node[key], int) or isinstance(node[key], bool) or node[key] < 0):
            return f"{path}/{key} must be a non-negative integer"
    return None
