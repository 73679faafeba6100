"""Extract the OpenAI schemas the server's tests validate against, with all they reference.

    python tests/data/extract_openai_schemas.py path/to/openai-openapi.yaml

Reads OpenAI's OpenAPI description (github.com/openai/openai-openapi, MIT) and writes
``openai_schemas.json`` beside this script: ``{"components": {"schemas": {...}}}`` holding the
root schemas below and every schema they ``$ref`` transitively, verbatim, so that
``#/components/schemas/...`` references resolve inside the file. Needs PyYAML.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

ROOTS = ("Batch", "CreateChatCompletionResponse", "ListBatchesResponse", "OpenAIFile")
PREFIX = "#/components/schemas/"
OUT = Path(__file__).with_name("openai_schemas.json")


def refs(node: Any) -> set[str]:
    """The schema names ``node`` references anywhere inside it."""
    if isinstance(node, dict):
        found = {node["$ref"].removeprefix(PREFIX)} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(value) for value in node))
    return set()


def extract(spec: dict[str, Any]) -> dict[str, Any]:
    """The root schemas and their transitive references, sorted by name."""
    schemas = spec["components"]["schemas"]
    wanted: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(refs(schemas[name]))
    return {"components": {"schemas": {name: schemas[name] for name in sorted(wanted)}}}


def main(argv: list[str]) -> None:
    yaml = importlib.import_module("yaml")  # only this script needs PyYAML
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec = yaml.load(Path(argv[1]).read_text(encoding="utf-8"), Loader=loader)
    OUT.write_text(json.dumps(extract(spec), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv)
