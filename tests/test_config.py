from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_config, with_overrides
from engine.errors import ConfigError
from engine.shipped import example_config

MINIMAL = """
name = "t"
labels = ["A", "B"]
[dataset]
path = "data.csv"
label_column = "gold"
[predict]
model = "m"
user_template = "{text}"
[judge]
model = "j"
user_template = "{text} {prediction} {labels}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "task.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_examples_load() -> None:
    imdb = load_config(example_config("imdb"))
    assert imdb.dataset.path.exists() and imdb.dataset.label_column == "Genre"
    assert "Drama" in imdb.labels and imdb.predict.system_prompt.startswith("You are a helpful assistant")
    ag_news = load_config(example_config("ag_news"))
    assert ag_news.dataset.label_column is None


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.dataset.path == tmp_path / "data.csv"
    assert config.endpoint.base_url is None and config.endpoint.concurrency == 64


def test_unknown_key_names_file_and_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"task.toml: predict.temprature: unknown key"):
        load_config(write(tmp_path, MINIMAL.replace('model = "m"', 'model = "m"\ntemprature = 1')))


def test_wrong_type_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"task.toml: predict.max_tokens"):
        load_config(write(tmp_path, MINIMAL.replace('model = "m"', 'model = "m"\nmax_tokens = "many"')))


def test_negative_rate_limit_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"endpoint.rpm: Input should be greater than 0"):
        load_config(write(tmp_path, MINIMAL + "[endpoint]\nrpm = -5\n"))


def test_key_itself_in_api_key_env_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NAME of an environment variable") as caught:
        load_config(write(tmp_path, MINIMAL + '[endpoint]\napi_key_env = "sk-abc.def"\n'))
    assert "sk-abc.def" not in str(caught.value)


def test_two_selections_conflict(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="choose one of head, tail, sample"):
        load_config(write(tmp_path, MINIMAL.replace('label_column = "gold"', "head = 3\ntail = 4")))


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "name = "))


def test_overrides_apply_and_are_validated(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    changed = with_overrides(config, {"endpoint.rpm": 600, "predict.model": "other", "endpoint.tpm": None})
    assert changed.endpoint.rpm == 600 and changed.predict.model == "other" and changed.endpoint.tpm is None
    with pytest.raises(ConfigError, match=r"command line: endpoint.concurrency"):
        with_overrides(config, {"endpoint.concurrency": 0})


def test_missing_key_variable_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENGINE_TEST_KEY", raising=False)
    text = MINIMAL + '[endpoint]\nbase_url = "https://api.example.invalid/v1"\napi_key_env = "ENGINE_TEST_KEY"\n'
    config = load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match="ENGINE_TEST_KEY is not set"):
        config.api_key()
    local = with_overrides(config, {"endpoint.base_url": "http://127.0.0.1:11434/v1"})
    assert local.api_key() == "no-key"  # vLLM, Ollama, llama.cpp on loopback rarely check keys
    monkeypatch.setenv("ENGINE_TEST_KEY", "sk-from-env")
    assert config.api_key() == "sk-from-env"
