"""Embedded model throughput: through the Ray Serve deployment vs llama-cpp called directly.

The reference is llama-cpp as a competent user calls it: one long-lived ``Llama`` streaming
chat completions, which reuses the prompt it has cached wherever the next prompt starts the
same way. The same prompts, in the same order, max_tokens and temperature 0 (and with
``--schema`` the same JSON-schema grammar) go through the deployment, one stream at a time,
alternating which way goes first so machine noise hits both alike. The primary figure is
serve / direct (target: the deployment keeps at least 0.9 of direct speed); a second ``Llama``
that empties its context before each call is measured too, for reference. Prints tokens/s for
each way and one JSON line at the end.

    python bench/embedded.py [--rounds 3] [--max-tokens 64] [--schema] [--keep-niceness]

Ray runs its workers, the model replica among them, at a raised niceness (15), so on a busy
machine they get less CPU than an ordinary process. By default the bench moves itself to the
replica's niceness before measuring, so both ways compete for the CPU alike; the figures say
which niceness they were taken at.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time

PROMPTS = [
    "Explain what a race condition is in two sentences.",
    "List three risks of storing passwords in plain text.",
    "Describe what a unit test is for.",
    "Why should a function have one job? Answer briefly.",
]


# A bounded object, as the flows ask of the model (every string and array bounded).
SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "maxLength": 120},
        "points": {"type": "array", "items": {"type": "string", "maxLength": 60}, "maxItems": 3},
    },
    "required": ["summary", "points"],
}

Run = tuple[int, float, float, str]  # tokens, seconds, seconds to first token, text


def prompt_length(llm, messages: list[dict]) -> int:
    """How many tokens llama-cpp's chat handler makes of ``messages`` (the GGUF's template)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos, bos = llm.token_eos(), llm.token_bos()
    text = llm._model.token_get_text
    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=text(eos),
        bos_token=text(bos),
        stop_token_ids=[eos],
    )
    result = formatter(messages=messages)
    prompt = result.prompt.encode("utf-8")
    return len(llm.tokenize(prompt, add_bos=not result.added_special, special=True))


def direct_run(llm, prompt: str, max_tokens: int, fresh: bool, grammar) -> Run:
    """One streamed chat completion straight from llama-cpp.

    ``fresh``: empty the context first; otherwise llama-cpp reuses what it has cached.
    """
    messages = [{"role": "user", "content": prompt}]
    prompt_tokens = prompt_length(llm, messages)
    if fresh:
        llm.reset()
    start = time.perf_counter()
    first, text, finish = None, [], None
    for chunk in llm.create_chat_completion(
        messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True, grammar=grammar
    ):
        choice = chunk["choices"][0]
        finish = choice.get("finish_reason") or finish
        if piece := choice["delta"].get("content"):
            first = first or time.perf_counter()
            text.append(piece)
    end = time.perf_counter()
    # Tokens sampled, counted as llama-cpp's usage (and the engine) does: every one but the
    # last went into the context; the last counts unless it was the end of the turn.
    tokens = llm.n_tokens - prompt_tokens + (1 if finish == "length" else 0)
    return tokens, end - start, (first or end) - start, "".join(text)


async def serve_run(handle, prompt: str, max_tokens: int, schema) -> Run:
    from actors.engines.base import ChatRequest
    from actors.model import stream_chat

    messages = [{"role": "user", "content": prompt}]
    req = ChatRequest(messages=messages, max_tokens=max_tokens, response_schema=schema)
    start = time.perf_counter()
    first, tokens, text = None, 0, []
    async for delta in stream_chat(handle, req):
        if delta.text:
            first = first or time.perf_counter()
            text.append(delta.text)
        if delta.usage is not None:
            tokens = delta.usage.completion_tokens
    end = time.perf_counter()
    return tokens, end - start, (first or end) - start, "".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--schema", action="store_true", help="constrain both ways to the same JSON schema"
    )
    parser.add_argument(
        "--keep-niceness", action="store_true", help="measure llama-cpp at this process's niceness"
    )
    args = parser.parse_args()

    import ray
    from llama_cpp import Llama, LlamaGrammar

    from actors.config import Settings
    from actors.engines.embedded import default_model_path
    from actors.model import start_model, stop_model

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        settings = Settings.load({}, data_dir=tempfile.mkdtemp(prefix="bench-"), engine="embedded")
        t0 = time.perf_counter()
        app = start_model(settings, name="bench-embedded")
        startup = time.perf_counter() - t0
        replica_nice = ray.get(ray.remote(num_cpus=0)(lambda: os.nice(0)).remote())
        if not args.keep_niceness and replica_nice > os.nice(0):
            os.nice(replica_nice - os.nice(0))  # raising niceness needs no privilege
        path = str(default_model_path())
        # Two long-lived Llamas, so the fresh way's calls never fill the cached way's context.
        llms = {
            way: Llama(model_path=path, n_ctx=2048, n_threads=2, verbose=False)
            for way in ("direct", "fresh")
        }
        schema = SCHEMA if args.schema else None
        # The grammar the engine builds from the same schema (it sorts the keys too).
        grammar = (
            LlamaGrammar.from_json_schema(json.dumps(schema, sort_keys=True), verbose=False)
            if schema
            else None
        )
        ways = ("direct", "fresh", "serve")
        totals = {way: [0, 0.0, 0.0] for way in ways}
        pair_ratios: dict[str, list[float]] = {"direct": [], "fresh": []}
        same_text = 0
        asyncio.run(serve_run(app.handle, "Warm up.", 4, schema))  # first call sets up the router
        for llm in llms.values():
            direct_run(llm, "Warm up.", 4, False, grammar)
        runs = 0
        for r in range(args.rounds):
            for i, prompt in enumerate(PROMPTS):
                order = ways if (r + i) % 2 == 0 else ways[::-1]
                pair = {}
                for way in order:
                    if way == "serve":
                        got = asyncio.run(serve_run(app.handle, prompt, args.max_tokens, schema))
                    else:
                        got = direct_run(
                            llms[way], prompt, args.max_tokens, way == "fresh", grammar
                        )
                    for k in range(3):
                        totals[way][k] += got[k]
                    pair[way] = got
                for base in pair_ratios:
                    serve, ref = pair["serve"], pair[base]
                    pair_ratios[base].append((serve[0] / serve[1]) / (ref[0] / ref[1]))
                same_text += pair["serve"][3] == pair["direct"][3]
                runs += 1
        for llm in llms.values():
            llm.close()
        stop_model(app.name)
    finally:
        ray.shutdown()

    rate = {way: t[0] / t[1] for way, t in totals.items()}
    ttft = {way: t[2] / runs for way, t in totals.items()}
    ratio = {base: rate["serve"] / rate[base] for base in pair_ratios}
    # Other work on the machine comes in bursts: the median of back-to-back runs resists them.
    median = {base: statistics.median(v) for base, v in pair_ratios.items()}
    labels = {
        "direct": "llama-cpp direct (cached)",
        "fresh": "llama-cpp direct (fresh)",
        "serve": "through Ray Serve",
    }
    print(f"{'deployment start-up':28s}{startup:6.2f} s")
    print(f"{'niceness':28s}replica {replica_nice}, llama-cpp direct {os.nice(0)}")
    print(f"{'constraint':28s}{'JSON schema (both ways)' if args.schema else 'none'}")
    for way in ways:
        print(f"{labels[way]:28s}{rate[way]:6.1f} tok/s   first token {ttft[way] * 1000:5.0f} ms")
    print(f"{'same text as direct':28s}{same_text} of {runs} answers")
    for base, label in (("direct", "serve / direct  PRIMARY"), ("fresh", "serve / fresh")):
        print(
            f"{label:28s}{ratio[base]:6.2f}   median of runs {median[base]:.2f}"
            + ("   (target >= 0.90)" if base == "direct" else "")
        )
    print(
        json.dumps(
            {
                "bench": "embedded",
                "rounds": args.rounds,
                "prompts": len(PROMPTS),
                "max_tokens": args.max_tokens,
                "schema": args.schema,
                "ratio": round(ratio["direct"], 3),  # the target: serve / llama-cpp cached
                "median_ratio": round(median["direct"], 3),
                "ratio_fresh": round(ratio["fresh"], 3),
                "median_ratio_fresh": round(median["fresh"], 3),
                "tok_s": {way: round(rate[way], 1) for way in ways},
                "ttft_ms": {way: round(ttft[way] * 1000, 1) for way in ways},
                "same_text": same_text,
                "runs": runs,
                "startup_s": round(startup, 2),
                "niceness": {"replica": replica_nice, "direct": os.nice(0)},
                "load_avg": [round(x, 2) for x in os.getloadavg()],
                "tokens": {way: t[0] for way, t in totals.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
