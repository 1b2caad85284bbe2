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
import collections
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from actors.config import Settings
from actors.engines import guarded, make_engine, select_engine
from actors.engines.base import ChatRequest, Delta, EngineError, backoff
from actors.runtime import freeze_heap

# Replica lost or not yet reachable before the first delta: retry this many times.
CONNECT_ATTEMPTS = 3
# Text deltas arriving within a window leave the replica as one: every item of a Serve stream
# is a Ray object (a fraction of a millisecond of CPU on each side), and at 100 tokens/s per
# stream a dozen streams would otherwise spend a core on that alone. The window grows with the
# streams the replica serves, so its items stay near ITEMS_PER_S a second whatever their
# number: a lone stream waits MERGE_MIN_S, a dozen MERGE_MAX_S. The first delta after a quiet
# spell leaves at once, so a window adds at most its length to a token's latency.
ITEMS_PER_S = 500
MERGE_MIN_S = 0.005
MERGE_MAX_S = 0.02


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
        freeze_heap()

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

    def _window(self) -> float:
        return min(MERGE_MAX_S, max(MERGE_MIN_S, self._engine.active / ITEMS_PER_S))

    async def stream(self, request: ChatRequest | bytes) -> AsyncIterator[Delta]:
        req = request if isinstance(request, ChatRequest) else decode_request(request)
        async with contextlib.aclosing(merged(self._engine.stream(req), self._window)) as deltas:
            async for delta in deltas:
                yield delta


_END = object()


async def merged(
    deltas: AsyncIterator[Delta], window: float | Callable[[], float]
) -> AsyncIterator[Delta]:
    """``deltas`` with the text-only ones that come within ``window`` of each other joined
    (``window`` may be a function, asked at each item: the window for now).

    A delta carrying tool calls, a finish reason or usage is passed on as it is, after the text
    gathered before it, so the order of everything is kept. The engine is read by a task of its
    own, so it never waits on the window; closing this generator stops that task and the engine.
    """
    items: collections.deque = collections.deque()
    arrived = asyncio.Event()

    async def pump() -> None:
        end: Any = _END
        try:
            async with contextlib.aclosing(deltas) as source:
                async for delta in source:
                    items.append(delta)
                    arrived.set()
        except Exception as exc:  # handed to the reader, raised there
            end = exc
        except BaseException as exc:
            # A CancelledError of the engine's own (an inner request someone else cancelled)
            # or this pump being stopped: either way the reader must not wait for ever.
            end = EngineError(f"the model stream stopped: {type(exc).__name__}", retryable=True)
            raise
        finally:
            items.append(end)
            arrived.set()

    async def arrival(timeout: float | None) -> bool:
        # Waiting on an Event (not on a queue's get) so a timeout can never lose an item.
        if not items:
            arrived.clear()
            try:
                async with asyncio.timeout(timeout):
                    await arrived.wait()
            except TimeoutError:
                return False
        return True

    loop = asyncio.get_running_loop()
    task = loop.create_task(pump())
    window_now = window if callable(window) else lambda: window
    try:
        sent_at = float("-inf")
        pending: list[Delta] = []
        while True:
            await arrival(None)
            item = items.popleft()
            if item is not _END and not isinstance(item, BaseException) and _text_only(item):
                pending.append(item)
                span = window_now()
                # Gather what else comes before this window is over, then send it as one.
                while True:
                    wait = sent_at + span - loop.time()
                    if not items and (wait <= 0 or not await arrival(wait)):
                        break
                    if not _text_only_item(items[0]):
                        break
                    pending.append(items.popleft())
                yield _join(pending)
                pending = []
                sent_at = loop.time()
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            sent_at = loop.time()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _text_only_item(item: Any) -> bool:
    return item is not _END and not isinstance(item, BaseException) and _text_only(item)


def _text_only(delta: Delta) -> bool:
    return not delta.tool_calls and delta.finish_reason is None and delta.usage is None


def _join(pending: list[Delta]) -> Delta:
    if len(pending) == 1:
        return pending[0]
    return Delta(text="".join(d.text for d in pending), tokens=sum(d.tokens for d in pending))


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
    try:
        handle = serve.run(app, name=name, route_prefix=None, blocking=False)
    except RuntimeError as exc:  # Serve's "Deploying application … failed", after its retries
        reason = _deploy_failure(name) or str(exc)
        with contextlib.suppress(Exception):
            serve.delete(name)  # a failed application is not left to retry in the background
        raise ModelUnavailable(f"the {chosen} model {model!r} could not be started: {reason}") from None
    caps: Capabilities = handle.capabilities.remote().result()
    return ModelApp(
        name=name,
        engine=caps.engine,
        model=caps.model,
        supports_tools=caps.supports_tools,
        supports_continue=caps.supports_continue,
        handle=handle,
    )


class ModelUnavailable(RuntimeError):
    """The model deployment could not start (its replica failed to construct its engine)."""


def _deploy_failure(name: str) -> str:
    """The error a failed replica of application ``name`` raised, as one line ('' if unknown).

    Serve keeps it, with its traceback, in the deployment's status message; the last line is
    the exception (``actors.config.ConfigError: the scripted engine needs a script``)."""
    from ray import serve

    try:
        app = serve.status().applications.get(name)
        messages = [d.message for d in app.deployments.values()] if app is not None else []
    except Exception:  # a status that cannot be read leaves Serve's own message
        return ""
    for message in messages:
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        if lines:
            kind, sep, text = lines[-1].partition(": ")
            kind = kind.rsplit(".", 1)[-1]
            return text if sep and kind == "ConfigError" else f"{kind}{sep}{text}"
    return ""


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
    streaming = _streaming(handle)
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


def _streaming(handle: Any) -> Any:
    # Straight to the replica over gRPC rather than through Ray's object store: each streamed
    # item as a Ray object cost ~10 ms more per token on the fan-out benchmark (bench/fanout.py).
    # A Ray from before the option (early 2026) keeps the object-store path.
    try:
        return handle.options(stream=True, _by_reference=False)
    except TypeError:
        return handle.options(stream=True)


def _replica_lost(exc: BaseException) -> bool:
    from ray import exceptions as rx

    lost = (rx.RayActorError, rx.ActorUnavailableError)
    return (isinstance(exc, lost) and not isinstance(exc, rx.RayTaskError)) or _transport_failed(exc)


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
    return EngineError(message, isinstance(exc, transient) or _transport_failed(exc))


def _transport_failed(exc: BaseException) -> bool:
    """A gRPC failure between the step and the replica: the request can be tried again.

    Serve reports a lost replica as ``ActorUnavailableError``; other transport failures (a reset
    connection, an internal error) come through as the raw gRPC error.
    """
    import grpc

    return isinstance(exc, grpc.aio.AioRpcError)
