"""The public API: ``engine`` exports exactly these names, each importable and documented.

Adding or removing a public name is a decision: make it here, in ``engine.__all__`` and in the
package docstring's map of the API, together.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import engine

PUBLIC = {
    "Evaluation",
    # the task
    "TaskConfig",
    "example_config",
    "load_config",
    "with_overrides",
    # judging finished runs
    "Sources",
    "judging_config",
    # the rows
    "JoinedRow",
    "RowStatus",
    # the endpoint
    "Provider",
    "ChatRequest",
    "ChatReply",
    "ChatResult",
    "Failure",
    "Usage",
    "BatchJob",
    "BatchCounts",
    "RateLimits",
    "MockProvider",
    # the errors
    "AuthError",
    "BatchApiMissingError",
    "ConfigError",
    "EngineError",
    "FatalError",
    "JournalError",
    "ModelNotFoundError",
    "ProviderError",
    "RunInUseError",
}


def test_the_exported_names_are_exactly_the_public_api() -> None:
    assert len(engine.__all__) == len(set(engine.__all__)), "a name is exported twice"
    assert set(engine.__all__) == PUBLIC


def test_a_star_import_brings_every_public_name() -> None:
    namespace: dict[str, object] = {}
    exec("from engine import *", namespace)
    assert PUBLIC <= namespace.keys()


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_public_name_is_in_the_package_docstring(name: str) -> None:
    assert f"``{name}``" in (engine.__doc__ or ""), f"engine's docstring does not name {name}"


# A type alias (``RowStatus``) cannot carry a docstring: the package docstring describes it.
CLASSES_AND_FUNCTIONS = sorted(
    name for name in PUBLIC
    if inspect.isclass(getattr(engine, name, None)) or inspect.isfunction(getattr(engine, name, None))
)


@pytest.mark.parametrize("name", CLASSES_AND_FUNCTIONS)
def test_every_public_class_and_function_has_its_own_docstring(name: str) -> None:
    public = getattr(engine, name)
    doc = inspect.cleandoc(vars(public).get("__doc__") or "") if inspect.isclass(public) else public.__doc__
    generated = dataclasses.is_dataclass(public) and (doc or "").startswith(f"{name}(")
    assert doc and not generated, f"engine.{name} has no docstring of its own"


def test_public_names_are_defined_by_the_engine() -> None:
    foreign = {name for name in CLASSES_AND_FUNCTIONS if not getattr(engine, name).__module__.startswith("engine.")}
    assert not foreign, f"re-exported from outside the engine: {foreign}"
