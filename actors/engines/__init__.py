"""The model engines behind one calling convention (``actors.engines.base``).

``select_engine`` decides which engine and which exact model a run uses (one model per run,
recorded in its plan); ``make_engine`` builds it. ``auto`` prefers vLLM where a GPU and vLLM are
present, then an OpenAI-compatible endpoint if one is configured, then the embedded CPU model.
The scripted test double is only ever chosen by name.
"""

from __future__ import annotations

from typing import Any

from actors.config import ConfigError, Settings
from actors.engines.base import ChatRequest, Delta, Engine, EngineError, Guard, ToolCallDelta, Usage

__all__ = [
    "ChatRequest",
    "Delta",
    "Engine",
    "EngineError",
    "Guard",
    "ToolCallDelta",
    "Usage",
    "engine_problem",
    "guarded",
    "make_engine",
    "select_engine",
]

# A stream that has not produced its first token by then is retried (it is usually stuck).
FIRST_TOKEN_TIMEOUT = 60.0


def select_engine(settings: Settings, *, gpu_available: bool | None = None) -> tuple[str, str]:
    """``(engine name, exact model id)`` for a run under ``settings``.

    Raises ``ConfigError`` (a ``ValueError``) when the engine asked for cannot run here.
    """
    from actors.engines import vllm

    name = settings.engine
    if name == "auto":
        gpu = vllm.gpu_available() if gpu_available is None else gpu_available
        if gpu and vllm.vllm_available():
            name = "vllm"
        elif settings.openai_base_url:
            name = "openai"
        else:
            name = "embedded"
    if name == "vllm":
        if not vllm.vllm_available():
            raise ConfigError(
                "the vllm engine needs vLLM installed: pip install 'orchestrator[vllm]'"
            )
        return name, settings.model or settings.vllm_model
    if name == "openai":
        return name, _openai_model(settings)
    if name == "embedded":
        from actors.engines.embedded import resolve_model

        try:
            return name, resolve_model(settings.model)[0]
        except EngineError as exc:
            raise ConfigError(str(exc)) from None
    if name == "scripted":
        return name, settings.model or "scripted"
    raise ConfigError(f"unknown engine {name!r}")


def engine_problem(settings: Settings) -> str:
    """Why ``settings.engine``, named outright, cannot run here, or '' if it can. ``auto`` is
    not judged: its choice depends on the GPUs of the cluster Ray joins."""
    if settings.engine in ("auto", "scripted"):
        return ""
    try:
        select_engine(settings)
    except ConfigError as exc:
        return str(exc)
    return ""


def _openai_model(settings: Settings) -> str:
    from actors.engines.openai import probe

    if not settings.openai_base_url:
        raise ConfigError(
            "the openai engine needs ORCH_OPENAI_BASE_URL (e.g. http://127.0.0.1:8000/v1)"
        )
    if settings.model:
        return settings.model
    try:
        info = probe(settings.openai_base_url, settings.openai_api_key)
    except EngineError as exc:
        raise ConfigError(str(exc)) from None
    if not info.models:
        raise ConfigError(f"{settings.openai_base_url} serves no model; name one with ORCH_MODEL")
    return info.models[0]


def lacks_script(engine: str, model: str, script: Any) -> bool:
    """Whether ``engine`` is the scripted test double with nothing to play: no script given,
    and no JSON file named as its model."""
    return engine == "scripted" and script is None and not model.endswith(".json")


# Prompts are fitted to ``context_tokens`` by an estimate of four characters a token, and
# SmolLM2's tokenizer makes up to ~1.2 times that of code (measured over this repository's
# sources): the embedded context holds the difference, so a prompt the estimate lets in still
# leaves room for a whole answer instead of cutting it short.
ESTIMATE_HEADROOM = 1.25


def make_engine(
    name: str, settings: Settings, script: Any = None, *, llm_handle: Any = None
) -> Engine:
    """Build engine ``name`` for ``settings`` (``settings.model`` is the model it serves)."""
    if name == "embedded":
        from actors.engines.embedded import EmbeddedEngine

        return EmbeddedEngine(
            settings.model,
            n_ctx=int(settings.context_tokens * ESTIMATE_HEADROOM) + settings.step_max_tokens,
            n_threads=2,
        )
    if name == "openai":
        from actors.engines.openai import OpenAIEngine

        if not settings.openai_base_url:
            raise ConfigError("the openai engine needs ORCH_OPENAI_BASE_URL")
        return OpenAIEngine(
            settings.openai_base_url,
            api_key=settings.openai_api_key,
            model=settings.model,
            timeout=settings.model_timeout,
        )
    if name == "scripted":
        from actors.engines.scripted import ScriptedEngine

        if lacks_script(name, settings.model, script):
            raise ConfigError("the scripted engine needs a script (a JSON file as the model)")
        if script is None:
            script = settings.model
        return ScriptedEngine(script)
    if name == "vllm":
        from actors.engines.vllm import VLLMEngine

        if llm_handle is None:
            raise ConfigError(
                "the vllm engine runs behind Ray Serve LLM: start it with start_model"
            )
        return VLLMEngine(llm_handle, settings.model or settings.vllm_model)
    raise ConfigError(f"unknown engine {name!r}")


def guarded(engine: Engine, settings: Settings) -> Guard:
    """``engine`` with the run's stream limit, timeouts and retries."""
    first = min(FIRST_TOKEN_TIMEOUT, settings.model_timeout)
    if engine.name == "embedded":
        # On a busy CPU a long prompt alone can take a minute; that is slow, not stuck.
        first = settings.model_timeout
    streams = settings.max_streams
    if engine.name == "vllm":  # one front for all the vLLM replicas
        streams *= settings.vllm_replicas
    return Guard(
        engine,
        max_streams=streams,
        timeout=settings.model_timeout,
        first_token_timeout=first,
    )
