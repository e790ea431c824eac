"""The one exception tree of Ensemble-Hub.

```
EnsembleHubError
 ├── ConfigError          bad YAML, unknown member / strategy / scorer name, invalid parameter
 │    └── UnknownEnsembleError   a request names an ensemble the config does not have
 ├── ModelLoadError       weights or a model package missing, conversion failed, missing extra
 ├── InputError           a bad request: empty prompt, prompt longer than a member's context, bad dataset line
 ├── CapabilityError      a strategy asked a member for something its backend cannot do
 ├── GeneratorError       a member failed while generating (carries the member name)
 ├── ScorerError          a scorer failed while scoring
 └── AllMembersFailed     every member of a round failed (carries each member's error)
```

Errors raised by third-party libraries are mapped to these once, at the boundary where they are called
(``raise GeneratorError(...) from exc``), so callers only ever catch this tree.
"""

from __future__ import annotations

__all__ = [
    "AllMembersFailed",
    "CapabilityError",
    "ConfigError",
    "EnsembleHubError",
    "GeneratorError",
    "InputError",
    "ModelLoadError",
    "ScorerError",
    "UnknownEnsembleError",
]


class EnsembleHubError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(EnsembleHubError):
    """The configuration is invalid; the message names the key and what is allowed."""


class UnknownEnsembleError(ConfigError):
    """An ensemble name the config does not have; the message lists the configured ones."""


class ModelLoadError(EnsembleHubError):
    """A model could not be located, converted or loaded; the message says how to fix it."""


class InputError(EnsembleHubError):
    """The request or a dataset line is invalid; the message names the field.

    Args:
        message: What is wrong and what to send instead.
        param: The request field at fault, where one is (faces report it, as OpenAI's ``param``).
        code: A short machine-readable code for faces that send one (default: theirs).
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class CapabilityError(EnsembleHubError):
    """A strategy needs a capability (e.g. next-token distributions) that a member's backend lacks."""


class GeneratorError(EnsembleHubError):
    """A member failed while generating.

    Args:
        member: The member's name.
        message: What went wrong (no secrets: API backends mask keys before they get here).
        retry_after: Seconds the member asked to be left alone (an HTTP ``Retry-After``); the member policy
            waits that long before its next try.
        timed_out: The member gave no answer in time: it may be hanging, so it is neither retried nor asked
            again in the same request (one timeout per request at most; see `strategies.breaker`).
    """

    def __init__(
        self, member: str, message: str, *, retry_after: float | None = None, timed_out: bool = False
    ) -> None:
        super().__init__(f"member '{member}': {message}")
        self.member = member
        self.reason = message
        self.retry_after = retry_after
        self.timed_out = timed_out


class ScorerError(EnsembleHubError):
    """A scorer failed while scoring candidates."""


class AllMembersFailed(EnsembleHubError):
    """Every member of a round failed; ``errors`` maps each member to its error message."""

    def __init__(self, errors: dict[str, str]) -> None:
        detail = "; ".join(f"{name}: {err}" for name, err in errors.items())
        super().__init__(f"all members failed: {detail}")
        self.errors = dict(errors)
