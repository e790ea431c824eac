"""YAML configuration: named ensembles, their members, scorers, strategy and generation defaults.

```yaml
defaults:                      # generation defaults for every ensemble (each may override)
  max_tokens: 256
ensembles:
  trio:
    description: three small local models, judged by the strongest
    members:
      - {name: qwen, model: "embedded:qwen2.5-coder-0.5b-instruct"}
      - {name: smol, model: "embedded:smollm2-135m-instruct"}
    scorer: {type: judge, member: qwen}          # or a list of scorers, each with a weight
    strategy: {name: segment, segment_tokens: 32}
```
Validation errors name the key path and the allowed values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ensemblehub_core.exceptions import ConfigError, UnknownEnsembleError
from ensemblehub_core.registry import BACKENDS, SCORERS, STRATEGIES

__all__ = [
    "EnsembleConfig",
    "GenerationDefaults",
    "HubConfig",
    "MemberConfig",
    "PolicyConfig",
    "ScorerConfig",
    "ServerConfig",
    "StrategyConfig",
    "default_config_path",
    "error_lines",
    "load_config",
    "parse_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationDefaults(_Strict):
    """Generation settings; any of them can be overridden per call."""

    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[str] | None = None
    seed: int | None = None


class MemberConfig(_Strict):
    """One member.

    Attributes:
        name: Unique within the ensemble; shown in traces.
        backend: A registered backend (``hf``, ``function``, ...).
        model: Where weights come from (``embedded:NAME``, a ``.gguf`` file, a folder, or a hub id).
        dtype / device: Where and how a local model runs; dtype ``auto`` (default) is bfloat16 on GPUs and
            on CPUs with native bf16, float32 on other CPUs.
        prompt_format: ``chat`` or a template with ``{input}`` (for base models without a chat template).
        system_prompt: System message added when the conversation has none.
        options: Backend-specific settings (e.g. ``fn`` for the function backend, ``api_base`` for HTTP ones).
    """

    name: str = Field(min_length=1)
    backend: str = "hf"
    model: str | None = None
    dtype: str = "auto"
    device: str = "cpu"
    prompt_format: str | None = None
    system_prompt: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if v not in BACKENDS:
            raise ValueError(f"unknown backend '{v}'; allowed: {', '.join(sorted(BACKENDS))}")
        return v

    @model_validator(mode="after")
    def _known_options(self) -> MemberConfig:
        allowed = BACKENDS[self.backend].options
        unknown = sorted(set(self.options) - set(allowed)) if allowed is not None else []
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for backend '{self.backend}'; allowed: "
                             f"{', '.join(sorted(allowed or ()))}")
        return self

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        allowed = ("bfloat16", "float16", "float32", "auto")
        if v not in allowed:
            raise ValueError(f"unknown dtype '{v}'; allowed: {', '.join(allowed)}")
        return v


class ScorerConfig(_Strict):
    """One scorer.

    Attributes:
        type: A registered scorer (``judge``, ``likelihood``, ``prm``, ``reward_model``, ``function``).
        member: Use this member's model (and prompt format) to score.
        model: Or load a separate model from this source.
        weight: Weight in the panel's weighted mean.
        name: Name in traces (default: the type, plus the member).
        options: Scorer-specific settings (``aggregation``, ``separator``, ``template``, ``trust_remote_code``).
    """

    type: str
    member: str | None = None
    model: str | None = None
    weight: float = Field(default=1.0, gt=0)
    name: str | None = None
    dtype: str = "auto"
    device: str = "cpu"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in SCORERS:
            raise ValueError(f"unknown scorer type '{v}'; allowed: {', '.join(sorted(SCORERS))}")
        return v

    @property
    def display_name(self) -> str:
        return self.name or (f"{self.type}:{self.member}" if self.member else self.type)


class StrategyConfig(BaseModel):
    """The strategy by name, plus its own parameters (validated by the strategy)."""

    model_config = ConfigDict(extra="allow")
    name: str = "segment"

    @field_validator("name")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        if v not in STRATEGIES:
            raise ValueError(f"unknown strategy '{v}'; allowed: {', '.join(sorted(STRATEGIES))}")
        return v

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PolicyConfig(_Strict):
    """How members are called: timeout per call, retries with exponential backoff, and the circuit breaker
    (``max_failures`` failures skip a member for the rest of a request, and ``max_failures`` in a row for
    ``cooldown_s`` seconds of new requests; see `ensemblehub_core.strategies.breaker`)."""

    timeout_s: float | None = Field(default=None, gt=0)
    retries: int = Field(default=0, ge=0)
    backoff_s: float = Field(default=0.5, ge=0)
    max_failures: int | None = Field(default=3, ge=1)
    cooldown_s: float = Field(default=0.0, ge=0)


class EnsembleConfig(_Strict):
    """One named ensemble."""

    description: str = ""
    members: list[MemberConfig] = Field(min_length=1)
    scorer: list[ScorerConfig] = Field(default_factory=list)
    exclude_own: bool = False
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)

    @field_validator("scorer", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @field_validator("strategy", mode="before")
    @classmethod
    def _name_only(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _references(self) -> EnsembleConfig:
        names = [m.name for m in self.members]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"member names must be unique; repeated: {', '.join(dupes)}")
        for s in self.scorer:
            if s.member is not None and s.member not in names:
                raise ValueError(f"scorer '{s.type}' refers to member '{s.member}'; members: {', '.join(names)}")
        return self


class ServerConfig(_Strict):
    """Settings of the OpenAI-compatible server (``ensemblehub serve``): the config's ``server:`` section.

    Attributes:
        api_keys: Bearer keys accepted on ``/v1/*`` (empty: no key needed, unless ENSEMBLEHUB_API_KEY is set).
        preload: Ensembles built at start-up before ``/status`` answers ready: ``all``, ``default``, ``none``
            or a list of names. Others are built on their first request.
        max_pending: Requests admitted at once (running or waiting) across the server; more get a 429.
        max_concurrency: Requests of one ensemble that run at once; the others wait in the queue.
        max_batch_size: Requests decoded together in one batch (by ensembles that can batch; see the server
            docs).
        batch_window_ms: How long the first request of a batch waits for others to join it.
        max_choices: Upper bound on ``n`` times the number of prompts in one request.
        max_body_mb: Largest request body accepted; a larger one gets a 413.
        request_timeout_s: A request still running after this long is stopped (504, or an error event when
            streaming); 0 for no limit.
        max_tokens: The largest ``max_tokens`` a request may ask for (0: up to the members' context).
        max_prompt_tokens: The longest prompt a request may send, counted by each local member's tokenizer
            (0: up to the members' context).
        header_timeout_s: A connection whose request headers have not all arrived after this long is closed.
        body_timeout_s: A request whose body has not all arrived after this long gets a 408.
        shutdown_grace_s: After SIGTERM, how long requests in flight may run on before they are ended.
        ui: Serve the browser page at ``/ui`` (a live trace viewer and a run comparer; it calls the API with
            the key its user types).
    """

    api_keys: list[str] = Field(default_factory=list)
    preload: list[str] | str = "all"
    max_pending: int = Field(default=64, ge=1)
    max_concurrency: int = Field(default=4, ge=1)
    max_batch_size: int = Field(default=8, ge=1)
    batch_window_ms: float = Field(default=10.0, ge=0)
    max_choices: int = Field(default=32, ge=1)
    max_body_mb: float = Field(default=8.0, gt=0)
    request_timeout_s: float = Field(default=600.0, ge=0)
    max_tokens: int = Field(default=0, ge=0)
    max_prompt_tokens: int = Field(default=0, ge=0)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    ui: bool = True


class HubConfig(_Strict):
    """A whole configuration file."""

    defaults: GenerationDefaults = Field(default_factory=GenerationDefaults)
    ensembles: dict[str, EnsembleConfig] = Field(min_length=1)
    default_ensemble: str | None = None
    server: ServerConfig = Field(default_factory=ServerConfig)
    source: str = Field(default="<memory>", exclude=True)

    @model_validator(mode="after")
    def _default_exists(self) -> HubConfig:
        if self.default_ensemble is not None and self.default_ensemble not in self.ensembles:
            raise ValueError(
                f"default_ensemble '{self.default_ensemble}' is not defined; defined: {', '.join(self.ensembles)}"
            )
        preload = self.server.preload
        if isinstance(preload, str) and preload not in ("all", "default", "none"):
            raise ValueError(f"server.preload must be all, default, none or a list of names, got '{preload}'")
        unknown = [n for n in preload if n not in self.ensembles] if isinstance(preload, list) else []
        if unknown:
            raise ValueError(f"server.preload: {', '.join(unknown)}; defined: {', '.join(self.ensembles)}")
        return self

    @property
    def default_name(self) -> str:
        return self.default_ensemble or next(iter(self.ensembles))

    def get(self, name: str | None) -> EnsembleConfig:
        """The named ensemble (or the default one)."""
        name = name or self.default_name
        if name not in self.ensembles:
            raise UnknownEnsembleError(
                f"ensemble '{name}' is not configured; configured: {', '.join(self.ensembles)}")
        return self.ensembles[name]


def error_lines(exc: ValidationError, prefix: str = "", allowed: list[str] | None = None) -> list[str]:
    """A pydantic error as readable lines, one per problem: ``  key.path: what is wrong``.

    Args:
        exc: The validation error.
        prefix: Put before each key path (e.g. ``ensembles.trio.strategy.``).
        allowed: The keys that exist, named when a key is unknown (default: a pointer to the README).
    """
    lines = []
    for err in exc.errors():
        where = prefix + ".".join(str(p) for p in err["loc"]) if err["loc"] else prefix.rstrip(".") or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            hint = f"allowed: {', '.join(allowed)}" if allowed else "see the README's config section"
            msg = f"unknown key (check the spelling; {hint})"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict | list):
            msg = f"{msg}, got {err['input']!r}"
        lines.append(f"  {where}: {msg}")
    return lines


def default_config_path() -> Path:
    """The config shipped with the package (the embedded default ensembles)."""
    return Path(__file__).parent / "configs" / "default.yaml"


def parse_config(data: Any, source: str = "<memory>") -> HubConfig:
    """Validate a loaded YAML document; errors become one `ConfigError` listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping with an 'ensembles' key, got {type(data).__name__}")
    try:
        cfg = HubConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config {source}:\n" + "\n".join(error_lines(exc))) from None
    cfg.source = source
    return cfg


def load_config(path: str | Path | None = None) -> HubConfig:
    """Read and validate a YAML config file (the packaged default when ``path`` is None)."""
    p = Path(path) if path is not None else default_config_path()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    return parse_config(data, str(p))
