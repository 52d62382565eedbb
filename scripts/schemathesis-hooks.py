"""Schemathesis hooks for scripts/schemathesis.sh: fit Ember's OpenAPI document to the server under test.

- Drops the operations, request forms and fields that `x-ember-served-by` gives to other kinds of
  server than EMBER_SERVES (comma-separated: generative, fim, reward, embedding).
- Sets the limits marked `x-ember-limit` to the server's: EMBER_MAX_TOKENS_LIMIT (--max-tokens-limit),
  EMBER_VOCABULARY_SIZE, EMBER_ENCODER_VOCABULARY_SIZE, EMBER_DIMENSIONS.
- Adds what OpenAPI 3.0 cannot say and schemathesis can check: that the keys of `logit_bias` are
  token ids (as Swift's Int(String) reads them), and the JSON inside each server-sent event
  (`x-ember-json`, as contentMediaType and contentSchema).
"""

import copy
import os

import schemathesis

SERVES = set(os.environ.get("EMBER_SERVES", "generative").split(","))
COMPONENTS = {}


def served(node):
    if isinstance(node, dict) and "$ref" in node:
        node = COMPONENTS.get(node["$ref"].rsplit("/", 1)[1])
    kinds = node.get("x-ember-served-by") if isinstance(node, dict) else None
    return kinds is None or bool(SERVES & set(kinds))


def limits():
    def number(name):
        value = os.environ.get(name)
        return int(value) if value else None

    tokens, vocabulary = number("EMBER_MAX_TOKENS_LIMIT"), number("EMBER_VOCABULARY_SIZE")
    encoder, dimensions = number("EMBER_ENCODER_VOCABULARY_SIZE"), number("EMBER_DIMENSIONS")
    return {
        "max-tokens-limit": tokens and {"maximum": tokens},
        "vocabulary": vocabulary and {"maximum": vocabulary - 1},
        "encoder-vocabulary": encoder and {"maximum": encoder - 1},
        "dimensions": dimensions and {"enum": [dimensions, None]},
    }


def prune(node, fitted):
    """Removes what the server does not serve and applies the limits, in place."""
    if isinstance(node, list):
        for item in node:
            prune(item, fitted)
        return
    if not isinstance(node, dict):
        return
    for keyword in ("oneOf", "anyOf", "allOf"):
        if isinstance(node.get(keyword), list):
            node[keyword] = [branch for branch in node[keyword] if served(branch)]
    if isinstance(node.get("properties"), dict):
        node["properties"] = {name: value for name, value in node["properties"].items() if served(value)}
    limit = fitted.get(node.get("x-ember-limit"))
    if limit:
        node.update(limit)
    for value in node.values():
        prune(value, fitted)


def digits_below_or_equal(n):
    """A regular expression of the decimal numbers 0...n, without leading zeros."""
    text = str(n)
    if len(text) == 1:
        return f"[0-{n}]"
    options = ["[0-9]"] + [f"[1-9][0-9]{{{length - 1}}}" for length in range(2, len(text))]
    for i, digit in enumerate(text):
        low = 1 if i == 0 else 0
        if int(digit) > low:
            rest = len(text) - i - 1
            options.append(text[:i] + f"[{low}-{int(digit) - 1}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    options.append(text)
    return "|".join(options)


def inline(schema, components):
    """A response schema as plain JSON Schema: references resolved, `nullable` spelled out."""
    if isinstance(schema, list):
        return [inline(item, components) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return inline(components[schema["$ref"].rsplit("/", 1)[1]], components)
    result = {key: inline(value, components) for key, value in schema.items()
              if not key.startswith("x-") and key not in ("nullable", "example", "description")}
    if schema.get("nullable"):
        result = {"anyOf": [result, {"type": "null"}]}
    return result


def event_data(node, components):
    """Replaces each `x-ember-json` string schema with: [DONE], or JSON of the named schema."""
    if isinstance(node, list):
        for item in node:
            event_data(item, components)
        return
    if not isinstance(node, dict):
        return
    for key, value in list(node.items()):
        if isinstance(value, dict) and "x-ember-json" in value:
            target = {"$ref": value["x-ember-json"]}
            node[key] = {"anyOf": [
                {"type": "string", "enum": ["[DONE]"]},
                {"type": "string", "contentMediaType": "application/json", "contentSchema": inline(target, components)},
            ]}
        else:
            event_data(value, components)


@schemathesis.hook
def before_load_schema(context, raw_schema):
    COMPONENTS.update(raw_schema["components"]["schemas"])
    paths = raw_schema["paths"]
    for path, item in list(paths.items()):
        for method, operation in list(item.items()):
            if not served(operation):
                del item[method]
        if not item:
            del paths[path]
    components = raw_schema["components"]["schemas"]
    prune(raw_schema, limits())
    largest = components["TokenId"]["maximum"]
    # OpenAPI 3.0 is JSON Schema draft 4 to schemathesis: no propertyNames, but patternProperties.
    bias = components["LogitBias"]
    key = rf"^(\+?0*({digits_below_or_equal(largest)})|-0+)$"
    bias["patternProperties"] = {key: bias.pop("additionalProperties")}
    bias["additionalProperties"] = False
    event_data(components, copy.deepcopy(components))
