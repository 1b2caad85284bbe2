"""The model as a Ray Serve deployment: ``ModelServer`` wraps one engine; clients stream deltas.

``start_model`` deploys it (one Serve application per engine and model) and reports what the
engine can do; an ``AgentStep`` finds it by name with ``model_handle`` and calls
``stream_chat``. Backpressure: a replica takes at most ``max_streams`` requests and the Serve
router queues the rest, so more callers than streams wait rather than fail. For ``vllm`` the
application is Ray Serve LLM's ``LLMServer`` with a ``ModelServer`` in front of it, so clients
see the same interface whatever the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from actors.config import Settings
from actors.engines import guarded, make_engine, select_engine
from actors.engines.base import ChatRequest, Delta, EngineError, backoff

# Replica lost or not yet reachable before the first delta: retry this many times.
CONNECT_ATTEMPTS = 3


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    engine: str
    model: str
    supports_tools: bool
    supports_continue: bool
    max_streams: int


class Load(msgspec.Struct, frozen=True, kw_only=True):
    active: int  # streams running in this replica
    waiting: int  # requests in this replica waiting for a stream slot


class ModelServer:
    """One replica: an engine behind the guard (stream limit, timeouts, retries)."""

    def __init__(self, settings: Settings, engine: str, script: Any = None, llm: Any = None):
        self._engine = guarded(make_engine(engine, settings, script, llm_handle=llm), settings)

    def capabilities(self) -> Capabilities:
        e = self._engine
        return Capabilities(
            engine=e.name,
            model=e.model,
            supports_tools=e.supports_tools,
            supports_continue=e.supports_continue,
            max_streams=e.max_streams,
        )

    def load(self) -> Load:
        return Load(active=self._engine.active, waiting=self._engine.waiting)

    async def stream(self, request: ChatRequest | bytes) -> AsyncIterator[Delta]:
        req = request if isinstance(request, ChatRequest) else decode_request(request)
        async with contextlib.aclosing(self._engine.stream(req)) as deltas:
            async for delta in deltas:
                yield delta


def decode_request(data: bytes) -> ChatRequest:
    try:
        return msgspec.msgpack.decode(data, type=ChatRequest)
    except msgspec.DecodeError:
        return msgspec.json.decode(data, type=ChatRequest)


@dataclasses.dataclass(frozen=True)
class ModelApp:
    """A running model application and what its engine can do."""

    name: str
    engine: str
    model: str
    supports_tools: bool
    supports_continue: bool
    handle: Any


def start_model(
    settings: Settings,
    *,
    engine: str | None = None,
    script: Any = None,
    name: str = "model",
    replicas: int = 1,
) -> ModelApp:
    """Deploy the model as Serve application ``name`` (replacing one of that name).

    ``engine`` defaults to ``settings.engine`` (``auto`` is resolved here, and so is the exact
    model id). Needs Ray to be initialised.
    """
    from ray import serve

    chosen, model = select_engine(
        msgspec.structs.replace(settings, engine=engine or settings.engine)
    )
    settings = msgspec.structs.replace(settings, engine=chosen, model=model)
    _start_serve()
    deployment = serve.deployment(ModelServer, name="ModelServer")
    if chosen == "vllm":
        from actors.engines.vllm import build_llm_app

        streams = settings.max_streams * settings.vllm_replicas
        app = deployment.options(
            num_replicas=1, max_ongoing_requests=streams, ray_actor_options={"num_cpus": 0}
        ).bind(settings, chosen, None, build_llm_app(settings, name))
    else:
        app = deployment.options(
            num_replicas=replicas,
            max_ongoing_requests=settings.max_streams,
            # llama.cpp keeps a core busy per replica; the others only wait on sockets.
            ray_actor_options={"num_cpus": 1 if chosen == "embedded" else 0},
        ).bind(settings, chosen, script)
    handle = serve.run(app, name=name, route_prefix=None, blocking=False)
    caps: Capabilities = handle.capabilities.remote().result()
    return ModelApp(
        name=name,
        engine=caps.engine,
        model=caps.model,
        supports_tools=caps.supports_tools,
        supports_continue=caps.supports_continue,
        handle=handle,
    )


def _start_serve() -> None:
    """Serve without HTTP proxies: the model is reached through handles only."""
    from ray import serve

    try:
        serve.context._get_global_client()
        return  # already running
    except Exception:
        pass
    serve.start(proxy_location="Disabled")


def stop_model(name: str) -> None:
    from ray import serve

    serve.delete(name)


def model_handle(name: str) -> Any:
    """The handle of the running model application ``name``."""
    from ray import serve

    return serve.get_app_handle(name)


async def stream_chat(handle: Any, req: ChatRequest) -> AsyncIterator[Delta]:
    """Stream one chat request through the model deployment.

    Failures arrive as ``EngineError``; a replica lost before the first delta is retried.
    Leaving the loop early cancels the request in the replica (the engine stops generating).
    """
    streaming = handle.options(stream=True)
    for attempt in range(CONNECT_ATTEMPTS):
        gen = streaming.stream.remote(req)
        yielded, done = False, False
        try:
            async for delta in gen:
                yielded = True
                yield delta
            done = True
            return
        except Exception as exc:
            error = _engine_error(exc)
            if yielded or not _replica_lost(exc) or attempt + 1 >= CONNECT_ATTEMPTS:
                raise error from None
        finally:
            if not done:
                gen.cancel()
        await asyncio.sleep(backoff(attempt, 0.5, 4.0))


def _replica_lost(exc: BaseException) -> bool:
    from ray import exceptions as rx

    lost = (rx.RayActorError, rx.ActorUnavailableError)
    return isinstance(exc, lost) and not isinstance(exc, rx.RayTaskError)


def _engine_error(exc: BaseException) -> EngineError:
    """The ``EngineError`` behind what Ray raised, with its plain message."""
    from ray import exceptions as rx

    cause = exc.cause if isinstance(exc, rx.RayTaskError) else exc
    if isinstance(cause, EngineError):
        return EngineError(cause.message, cause.retryable)
    if isinstance(exc, asyncio.CancelledError | rx.TaskCancelledError):
        return EngineError("the model request was cancelled", retryable=True)
    transient = (rx.RayActorError, rx.ActorUnavailableError, rx.ObjectLostError, rx.GetTimeoutError)
    message = f"model deployment: {type(cause).__name__}: {cause}"
    return EngineError(message, isinstance(exc, transient))
