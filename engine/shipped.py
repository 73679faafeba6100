"""Where the shipped example tasks live: package data when installed, ``examples/`` in a checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import ConfigError


def examples_root() -> Path:
    try:
        return Path(str(resources.files("engine.examples")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "examples"


def example_config(name: str) -> Path:
    """The TOML file of the shipped example ``name`` (``imdb``, ``ag_news``)."""
    path = examples_root() / name / f"{name}.toml"
    if not path.exists():
        available = sorted(p.name for p in examples_root().iterdir() if (p / f"{p.name}.toml").exists())
        raise ConfigError(f"no shipped example {name!r} (available: {', '.join(available)})")
    return path
