"""The task files a user copies (the README's TOML block, the shipped examples) say what they mean:
a judge template written over several lines reaches the judge with real newlines, not a
backslash and an n, and every template fits its data set."""

from __future__ import annotations

import csv
import re
import tomllib
from pathlib import Path

import pytest

from engine.config import parse_config
from engine.prompts import PromptBuilder

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*/*.toml"))


def readme_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.DOTALL)


def readme_task() -> str:
    """The README's task file: its first TOML block (the later ones are tables to put in it)."""
    return str(readme_blocks()[0])


TASKS = {"README.md": (readme_task(), REPO / "examples" / "imdb")} | {
    f"{path.parent.name}/{path.name}": (path.read_text(encoding="utf-8"), path.parent) for path in EXAMPLES
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_templates_have_real_newlines(name: str) -> None:
    text, _ = TASKS[name]
    data = tomllib.loads(text)
    for stage in (data["predict"], data["judge"]):
        for field in ("system_prompt", "user_template"):
            template = stage.get(field, "")
            assert "\\n" not in template, f"{name}: {field} holds a backslash and an n: use a \"\"\"multi-line\"\"\" string"
    assert "\n" in data["judge"]["user_template"], f"{name}: the judge template is meant to be several lines"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_templates_fit_the_data_set(name: str) -> None:
    text, base_dir = TASKS[name]
    config = parse_config(tomllib.loads(text), source=name, base_dir=base_dir)
    with config.dataset.path.open(encoding="utf-8") as data:
        columns = next(csv.reader(data))
    PromptBuilder(config, columns)  # raises ConfigError naming the template otherwise


def test_the_readmes_later_blocks_are_valid_tables_of_its_task() -> None:
    blocks = readme_blocks()
    assert len(blocks) > 1
    for block in blocks[1:]:
        data = tomllib.loads(readme_task())
        for key, table in tomllib.loads(block).items():
            data[key] = {**data.get(key, {}), **table}
        parse_config(data, source="README.md", base_dir=REPO / "examples" / "imdb")
