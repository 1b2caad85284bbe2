"""All configuration, read once: ``ORCH_*`` environment variables, overridden by flags.

This is the only module that reads the environment. Everything else receives a ``Settings``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import msgspec

PREFIX = "ORCH_"
DEFAULT_VLLM_MODEL = "qwen3.6-35b-a3b-mxfp4"
ENGINES = ("auto", "embedded", "openai", "vllm", "scripted")

# Bounds, checked when settings are loaded: a zero stream limit or a port past 65535 is refused
# here, in one line naming the variable, not deep inside Ray or a socket call.
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
NotNegative = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
MAX_PORT = 65535
Port = Annotated[int, msgspec.Meta(ge=0, le=MAX_PORT)]


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "orchestrator")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Typed settings. Each field ``x`` is read from ``ORCH_X``."""

    data_dir: str = msgspec.field(default_factory=_default_data_dir)
    # The model: one engine and one model per run, recorded in the plan.
    engine: str = "auto"
    model: str = ""
    openai_base_url: str = ""
    openai_api_key: str = ""
    vllm_model: str = DEFAULT_VLLM_MODEL
    vllm_model_source: str = ""
    vllm_replicas: AtLeastOne = 1
    vllm_gpus: AtLeastOne = 1
    max_streams: AtLeastOne = 4  # concurrent model streams per engine replica (backpressure beyond)
    model_timeout: Seconds = 120.0
    # Agent steps.
    step_turns: AtLeastOne = 6
    step_max_tokens: AtLeastOne = 512
    context_tokens: AtLeastOne = 2048
    # A Ray resource that marks the nodes agents run on ('' = any node). Agents wait for such a
    # node, so on an autoscaling cluster asking for them starts one (see ray-cluster.yaml).
    agent_resource: str = ""
    # The API.
    host: str = "127.0.0.1"
    port: Port = 8765
    token: str = ""
    repo_roots: tuple[str, ...] = ()
    chat_webhook_url: str = ""
    personas_dir: str = ""
    max_request_bytes: AtLeastOne = 1_000_000
    # `orchestrator sql`: a query is stopped after this long (through a server, too).
    sql_timeout: Seconds = 60.0
    # A plain directory (not git) is copied into the run's data up to this size.
    copy_limit_bytes: NotNegative = 50_000_000

    @property
    def events_path(self) -> Path:
        return Path(self.data_dir) / "events.duckdb"

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from the environment, with non-None ``overrides`` (flags) winning."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, field_type in _FIELDS.items():
            raw = env.get(PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = _cast(name, raw, field_type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            settings = msgspec.convert(values, cls)
        except msgspec.ValidationError as exc:
            # msgspec says "Expected `int` >= 1 - at `$.max_streams`": name the variable.
            what, _, where = str(exc).partition(" - at `$.")
            name = where.rstrip("`")
            if name in _FIELDS:
                raise ConfigError(
                    f"{PREFIX}{name.upper()}={values.get(name)!r} is refused: {what[:1].lower()}{what[1:]}"
                ) from None
            raise ConfigError(f"bad setting: {exc}") from None
        token = settings.token
        if token and not (token.isascii() and token.isprintable() and " " not in token):
            # An HTTP header carries it, and servers read headers as Latin-1: a token outside
            # printable ASCII would only ever match in a URL. (Its value is not echoed.)
            raise ConfigError(f"{PREFIX}TOKEN is refused: use printable ASCII without spaces")
        if settings.engine not in ENGINES:
            raise ConfigError(
                f"{PREFIX}ENGINE={settings.engine!r} is not one of {', '.join(ENGINES)}"
            )
        return settings


# Each field's plain type (int for ``AtLeastOne``), for reading its variable.
_FIELDS = {
    f.name: get_args(f.type)[0] if get_origin(f.type) is Annotated else f.type
    for f in msgspec.structs.fields(Settings)
}


def _cast(name: str, raw: str, field_type: Any) -> Any:
    var = PREFIX + name.upper()
    try:
        if field_type is int:
            return int(raw)
        if field_type is float:
            return float(raw)
        if field_type == tuple[str, ...]:
            return tuple(p for p in raw.split(os.pathsep) if p)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {field_type.__name__}") from None
    return raw
