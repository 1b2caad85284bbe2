"""Embedded model throughput: through the Ray Serve deployment vs llama-cpp called directly.

The same prompts, max_tokens and temperature 0 both ways, one stream at a time, alternating
the two ways each round so machine noise hits both alike. Prints tokens/s for each, the ratio
(target: the deployment keeps at least 0.9 of direct speed), and one JSON line at the end.

    python bench/embedded.py [--rounds 3] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time

PROMPTS = [
    "Explain what a race condition is in two sentences.",
    "List three risks of storing passwords in plain text.",
    "Describe what a unit test is for.",
    "Why should a function have one job? Answer briefly.",
]


def direct_run(llm, prompt: str, max_tokens: int) -> tuple[int, float, float]:
    """(tokens, seconds, seconds to first token) for one streamed chat completion."""
    start = time.perf_counter()
    first, tokens = None, 0
    for chunk in llm.create_chat_completion(
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0.0,
        stream=True,
    ):
        if chunk["choices"][0]["delta"].get("content"):
            first = first or time.perf_counter()
            tokens += 1
    end = time.perf_counter()
    return tokens, end - start, (first or end) - start


async def serve_run(handle, prompt: str, max_tokens: int) -> tuple[int, float, float]:
    from actors.engines.base import ChatRequest
    from actors.model import stream_chat

    req = ChatRequest(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens)
    start = time.perf_counter()
    first, tokens = None, 0
    async for delta in stream_chat(handle, req):
        if delta.text:
            first = first or time.perf_counter()
        if delta.usage is not None:
            tokens = delta.usage.completion_tokens
    end = time.perf_counter()
    return tokens, end - start, (first or end) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    import ray
    from llama_cpp import Llama

    from actors.config import Settings
    from actors.engines.embedded import default_model_path
    from actors.model import start_model, stop_model

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        settings = Settings.load({}, data_dir=tempfile.mkdtemp(prefix="bench-"), engine="embedded")
        t0 = time.perf_counter()
        app = start_model(settings, name="bench-embedded")
        startup = time.perf_counter() - t0
        llm = Llama(model_path=str(default_model_path()), n_ctx=2048, n_threads=2, verbose=False)
        totals = {"direct": [0, 0.0, 0.0], "serve": [0, 0.0, 0.0]}
        asyncio.run(serve_run(app.handle, "Warm up.", 4))  # first call sets up the router
        direct_run(llm, "Warm up.", 4)
        runs = 0
        for r in range(args.rounds):
            for i, prompt in enumerate(PROMPTS):
                order = ["direct", "serve"] if (r + i) % 2 == 0 else ["serve", "direct"]
                for way in order:
                    if way == "direct":
                        got = direct_run(llm, prompt, args.max_tokens)
                    else:
                        got = asyncio.run(serve_run(app.handle, prompt, args.max_tokens))
                    for k in range(3):
                        totals[way][k] += got[k]
                runs += 1
        llm.close()
        stop_model(app.name)
    finally:
        ray.shutdown()

    rate = {way: t[0] / t[1] for way, t in totals.items()}
    ttft = {way: t[2] / runs for way, t in totals.items()}
    ratio = rate["serve"] / rate["direct"]
    print(f"deployment start-up        {startup:6.2f} s")
    print(f"llama-cpp direct           {rate['direct']:6.1f} tok/s   first token {ttft['direct'] * 1000:6.0f} ms")
    print(f"through Ray Serve          {rate['serve']:6.1f} tok/s   first token {ttft['serve'] * 1000:6.0f} ms")
    print(f"ratio serve/direct         {ratio:6.2f}   (target >= 0.90)")
    print(
        json.dumps(
            {
                "bench": "embedded",
                "rounds": args.rounds,
                "prompts": len(PROMPTS),
                "max_tokens": args.max_tokens,
                "direct_tok_s": round(rate["direct"], 1),
                "serve_tok_s": round(rate["serve"], 1),
                "ratio": round(ratio, 3),
                "direct_ttft_ms": round(ttft["direct"] * 1000, 1),
                "serve_ttft_ms": round(ttft["serve"] * 1000, 1),
                "startup_s": round(startup, 2),
                "tokens": {way: t[0] for way, t in totals.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
