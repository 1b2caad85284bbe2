"""The ``openai`` engine: any OpenAI-compatible endpoint (vLLM, llama.cpp, Ollama…), streamed.

``POST {base}/chat/completions`` with ``stream: true`` read as server-sent events. Streamed
tool-call fragments are assembled into whole calls. A response schema goes as
``response_format`` ``json_schema`` (the OpenAI and vLLM form); a server that refuses that
form (llama-cpp-python's) gets ``json_object`` with the schema, and the engine remembers.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from actors.engines.base import ChatRequest, Delta, EngineError, ToolCallDelta, Usage, check_request
from conductor.prompts import messages_tokens

# Servers whose /models answer says they can continue a partial assistant message.
CONTINUING_SERVERS = ("vllm",)
# Of an answer that is not the stream (an error, a web page), only this much is read: its
# message is in its first lines, and an error page may be huge.
HEAD_BYTES = 8192
# One line of the event stream at most (a whole answer sent as one chunk fits many times):
# a server that never ends a line must not fill this process's memory.
MAX_LINE_CHARS = 8 << 20
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class ServerInfo(msgspec.Struct, frozen=True):
    """What ``GET /models`` says: the models loaded and who serves them."""

    models: list[str]
    owned_by: str = ""


def base_v1(url: str) -> str:
    """The API root to put ``/chat/completions`` and ``/models`` under.

    ``http://host:8000`` gets ``/v1``; a URL with a path is taken as its root, as OpenAI's
    own clients take it (``/v1beta/openai`` stays so); a pasted endpoint
    (``…/v1/chat/completions``) is cut back to its root.
    """
    url = url.strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EngineError(f"the OpenAI base URL must start with http:// or https://: {url!r}")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise EngineError(f"the OpenAI base URL takes no query or fragment: {url!r}")
    path = parts.path.rstrip("/")
    for endpoint in ("/chat/completions", "/completions", "/models"):
        path = path.removesuffix(endpoint)
    return f"{parts.scheme}://{parts.netloc}{path or '/v1'}"


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def probe(base_url: str, api_key: str = "", timeout: float = 10.0) -> ServerInfo:
    """Ask the endpoint which models it serves (a blocking call, made once at start)."""
    url = base_v1(base_url) + "/models"
    try:
        resp = httpx.get(url, headers=_headers(api_key), timeout=timeout)
    except httpx.HTTPError as exc:
        if _certificate_failed(exc):
            raise _certificate_error(url, exc) from None
        raise EngineError(f"cannot reach the OpenAI endpoint {url}: {exc}", True) from None
    if resp.status_code >= 400:
        raise _http_error(resp.status_code, resp.text, url)
    try:
        data = resp.json().get("data") or []
    except (ValueError, AttributeError):
        raise EngineError(f"{url} did not answer with an OpenAI model list") from None
    models = [m["id"] for m in data if isinstance(m, dict) and m.get("id")]
    owners = [str(m.get("owned_by", "")) for m in data if isinstance(m, dict)]
    return ServerInfo(models=models, owned_by=owners[0] if owners else "")


def _http_error(status: int, body: str, where: str = "", retry_after: str | None = None) -> EngineError:
    transient = status == 429 or status >= 500
    detail = " ".join(body.split())[:300]
    who = f"model endpoint {where}" if where else "model endpoint"
    wait = _retry_after(retry_after) if transient else None
    return EngineError(f"{who} answered HTTP {status}: {detail}", transient, retry_after=wait)


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (seconds or an HTTP date), if it says."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _certificate_failed(exc: BaseException) -> bool:
    # httpx names the SSL error in its message; its cause is the ssl module's own error.
    return "CERTIFICATE_VERIFY_FAILED" in f"{exc} {exc.__cause__}"


def _certificate_error(url: str, exc: BaseException) -> EngineError:
    # Not transient: asking again gets the same certificate.
    return EngineError(f"the TLS certificate of {url} could not be verified: {exc}")


async def _head(resp: httpx.Response) -> str:
    """The start of the body, read no further than ``HEAD_BYTES``."""
    data = b""
    async for part in resp.aiter_bytes():
        data += part
        if len(data) >= HEAD_BYTES:
            break
    return data[:HEAD_BYTES].decode("utf-8", "replace")


def _not_a_stream(resp: httpx.Response) -> bool:
    """An answer that is clearly no event stream: a redirect (a wrong base URL, a login page),
    a web page, or one JSON completion (a server that ignores ``stream``). Real servers send
    ``text/event-stream``, some with parameters; an answer with no type is given its chance."""
    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    return 300 <= resp.status_code < 400 or ctype in ("text/html", "application/json")


def request_body(
    req: ChatRequest, model: str, *, schema_style: str = "json_schema", can_continue: bool
) -> dict[str, Any]:
    """The OpenAI chat-completions body for ``req`` (also what Ray Serve LLM takes)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": req.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
    }
    if req.seed is not None:
        body["seed"] = req.seed
    if req.stop:
        body["stop"] = req.stop
    if req.tools:
        body["tools"] = req.tools
        if req.tool_choice is not None:
            body["tool_choice"] = req.tool_choice
    if req.response_schema is not None:
        if schema_style == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": req.response_schema},
            }
        else:  # llama-cpp-python's form
            body["response_format"] = {"type": "json_object", "schema": req.response_schema}
    if req.continue_final:
        if not can_continue:
            raise EngineError("this endpoint cannot continue a partial answer")
        # vLLM's extension: render the last assistant message open and carry on from it.
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    return body


class Assembler:
    """Turns OpenAI stream chunks into ``Delta``s; the last one carries calls and usage.

    A chunk of the wrong shape is a clear ``EngineError``, not a Python error from deep in
    here; a usage block that makes no sense is left out, since the answer does not need it.
    """

    def __init__(self) -> None:
        # Each call's id, name and argument pieces (joined once, at the end).
        self._calls: dict[int, dict[str, Any]] = {}
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.pieces = 0

    def feed(self, chunk: Any) -> Delta | None:
        if not isinstance(chunk, dict):
            raise _malformed(chunk, "not an object")
        error = chunk.get("error")
        if error:
            raise _chunk_error(error)
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"]) or self.usage
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise _malformed(chunk, "choices is not a list")
        text, tokens = "", 0
        for choice in choices:
            delta = (choice.get("delta") or {}) if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                raise _malformed(chunk, "a choice without a delta object")
            content = delta.get("content")
            if content:
                if not isinstance(content, str):
                    raise _malformed(chunk, "content is not text")
                text += content
                tokens += 1
            frags = delta.get("tool_calls") or []
            if not isinstance(frags, list):
                raise _malformed(chunk, "tool_calls is not a list")
            for frag in frags:
                self._add_call(frag, chunk)
                tokens += 1
            if choice.get("finish_reason"):
                self.finish = str(choice["finish_reason"])
        self.pieces += tokens
        # Tool-call fragments are held until the call is whole, but their count goes out now:
        # a long call is progress (the first-token timeout must not fire on it) and the
        # person watching sees the agent's tokens grow.
        return Delta(text=text, tokens=tokens) if tokens else None

    def _add_call(self, frag: Any, chunk: dict[str, Any]) -> None:
        fn = (frag.get("function") or {}) if isinstance(frag, dict) else None
        if not isinstance(fn, dict):
            raise _malformed(chunk, "a tool call without a function object")
        call_id, name, args = frag.get("id") or "", fn.get("name") or "", fn.get("arguments")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise _malformed(chunk, "a tool call id or name is not text")
        if isinstance(args, dict | list):
            args = json.dumps(args)  # some servers send the arguments whole, as JSON, not text
        elif args is not None and not isinstance(args, str):
            raise _malformed(chunk, "tool call arguments are not text")
        index = frag.get("index")
        if index is None:
            # Some servers (Gemini's endpoint, proxies) send whole calls with no index: a new
            # id is a new call; a fragment without one continues the call before it.
            last = max(self._calls, default=None)
            index = 0 if last is None else last
            if last is not None and call_id and call_id != self._calls[last]["id"]:
                index = last + 1
        elif not isinstance(index, int):
            raise _malformed(chunk, "a tool call index is not a number")
        call = self._calls.setdefault(index, {"id": "", "name": "", "parts": []})
        # Names and ids come whole (once, or repeated); arguments come in pieces.
        call["id"] = call["id"] or call_id
        call["name"] = call["name"] or name
        if args:
            call["parts"].append(args)

    def done(self, prompt_estimate: int = 0) -> Delta:
        calls = [
            ToolCallDelta(id=c["id"], name=c["name"], arguments="".join(c["parts"]))
            for _, c in sorted(self._calls.items())
        ]
        # A server that sends no usage in a stream (llama-cpp-python's) gets the prompt
        # builder's estimate of the prompt and one token per streamed piece.
        usage = self.usage or Usage(prompt_tokens=prompt_estimate, completion_tokens=self.pieces)
        return Delta(tool_calls=calls, finish_reason=self.finish or "stop", usage=usage)


def _usage(u: Any) -> Usage | None:
    """The token counts of a usage block, or None if they are not counts."""
    if not isinstance(u, dict):
        return None
    try:
        return Usage(
            prompt_tokens=int(u.get("prompt_tokens") or 0),
            completion_tokens=int(u.get("completion_tokens") or 0),
        )
    except (TypeError, ValueError):
        return None


def _malformed(chunk: Any, why: str) -> EngineError:
    shown = json.dumps(chunk, default=str)[:200]
    return EngineError(f"model endpoint sent a malformed chunk ({why}): {shown}")


def parse_event(data: str) -> Any:
    """The JSON of one ``data:`` line; a clear error if it is not JSON."""
    try:
        return json.loads(data)
    except ValueError:
        raise EngineError(f"model endpoint sent a malformed event: {data[:200]!r}") from None


def cut_stream(hint: str = "") -> EngineError:
    # A whole answer's last chunk says why it ended. Ending without one, even with [DONE],
    # means the stream was cut, and its text is not the answer.
    return EngineError(f"model endpoint closed the stream before the answer finished{hint}", True)


def _chunk_error(error: Any) -> EngineError:
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message") or json.dumps(error)
    else:
        code, message = None, str(error)
    transient = isinstance(code, int) and (code == 429 or code >= 500)
    return EngineError(f"model endpoint error: {message}", transient)


class OpenAIEngine:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str = "",
        model: str = "",
        supports_tools: bool = False,
        supports_continue: bool | None = None,
        timeout: float = 120.0,
        info: ServerInfo | None = None,
    ):
        self.base_url = base_v1(base_url)
        if info is None and not model:
            info = probe(self.base_url, api_key)  # the model to use: must be answered
        elif info is None and supports_continue is None:
            try:
                info = probe(self.base_url, api_key)
            except EngineError:
                info = None  # unknown server: assume the plain OpenAI feature set
        if not model:
            if not info or not info.models:
                raise EngineError(f"{self.base_url} serves no model; name one (ORCH_MODEL)")
            model = info.models[0]
        self.model = model
        # Native tool calls need server support (vLLM: --enable-auto-tool-choice); off by
        # default, the caller then drives tools through a response schema, which any server
        # with structured output accepts.
        self.supports_tools = supports_tools
        if supports_continue is None:
            supports_continue = bool(info and info.owned_by in CONTINUING_SERVERS)
        self.supports_continue = supports_continue
        self._schema_style = "json_schema"
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_headers(api_key),
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        check_request(self, req)
        styles = [self._schema_style]
        if req.response_schema is not None and self._schema_style == "json_schema":
            styles.append("json_object")
        for style in styles:
            body = request_body(
                req, self.model, schema_style=style, can_continue=self.supports_continue
            )
            try:
                async with self._client.stream("POST", "/chat/completions", json=body) as resp:
                    if resp.status_code >= 400:
                        text = await _head(resp)
                        if style != styles[-1] and "response_format" in text:
                            # This server wants the other schema form (llama-cpp-python says
                            # so with a 500 carrying a validation error).
                            continue
                        raise _http_error(
                            resp.status_code, text, self.base_url, resp.headers.get("retry-after")
                        )
                    if _not_a_stream(resp):
                        # Not retried: asking again gets the same page.
                        start = " ".join((await _head(resp)).split())[:200]
                        ctype = resp.headers.get("content-type", "none")
                        where = resp.headers.get("location")
                        raise EngineError(
                            f"model endpoint {self.base_url} sent no event stream:"
                            f" HTTP {resp.status_code}, content-type {ctype}"
                            + (f", redirected to {where}" if where else "")
                            + f", beginning {start!r}"
                        )
                    self._schema_style = style
                    async for delta in _read_sse(resp, messages_tokens(req.messages)):
                        yield delta
                    return
            except httpx.TimeoutException as exc:
                raise EngineError(f"model endpoint timed out: {type(exc).__name__}", True) from None
            except httpx.TransportError as exc:
                if _certificate_failed(exc):
                    raise _certificate_error(self.base_url, exc) from None
                raise EngineError(f"model endpoint connection failed: {exc!r}", True) from None

    async def close(self) -> None:
        await self._client.aclose()


async def _lines(resp: httpx.Response) -> AsyncIterator[str]:
    """The body's lines, each at most ``MAX_LINE_CHARS`` long (httpx's ``aiter_lines`` keeps
    a line however long it grows). A CR and its LF split between two reads make one more
    empty line, which the event stream ignores."""
    held: list[str] = []
    size = 0
    async for text in resp.aiter_text():
        *whole, rest = _LINE_BREAK.split(text)
        for part in whole:
            held.append(part)
            yield "".join(held)
            held, size = [], 0
        held.append(rest)
        size += len(rest)
        if size > MAX_LINE_CHARS:
            raise EngineError(
                f"the model endpoint sent a line longer than {MAX_LINE_CHARS:,} characters"
            )
    if size:
        yield "".join(held)


async def _read_sse(resp: httpx.Response, prompt_estimate: int) -> AsyncIterator[Delta]:
    asm = Assembler()
    finished = False
    async for line in _lines(resp):
        if not line.startswith("data:"):
            continue  # blank separators, comments, event names
        data = line[5:].strip()
        if data == "[DONE]":
            finished = True
            break
        delta = asm.feed(parse_event(data))
        if delta is not None:
            yield delta
    if asm.finish is None:
        hint = (
            " (a llama-cpp-python server cuts a stream short when another request comes: run it"
            " with --interrupt_requests false)"
            if finished
            else ""
        )
        raise cut_stream(hint)
    yield asm.done(prompt_estimate)
