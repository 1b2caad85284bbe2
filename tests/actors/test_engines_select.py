"""Choosing the engine and the exact model of a run, and the vLLM configuration.

No GPU and no vLLM here: the vllm engine is tested for its configuration, validated by Ray's
own ``LLMConfig`` model, and for the way ``auto`` falls back without it.
"""

from __future__ import annotations

import json

import pytest

from actors.config import ConfigError, Settings
from actors.engines import make_engine, select_engine
from actors.engines import vllm as vllm_engine
from actors.engines.embedded import DEFAULT_MODEL

needs_no_vllm = pytest.mark.skipif(
    vllm_engine.vllm_available(), reason="vLLM is installed on this machine: no fallback to test"
)


def settings(**kw) -> Settings:
    return Settings.load({}, data_dir="/nonexistent", **kw)


@needs_no_vllm
@pytest.mark.parametrize("gpu", [False, True])
def test_auto_without_vllm_or_endpoint_runs_the_embedded_model(gpu):
    assert select_engine(settings(), gpu_available=gpu) == ("embedded", DEFAULT_MODEL)


@needs_no_vllm
def test_auto_prefers_a_configured_endpoint_to_the_embedded_model():
    s = settings(openai_base_url="http://127.0.0.1:9/v1", model="qwen-small")
    assert select_engine(s, gpu_available=True) == ("openai", "qwen-small")


def test_auto_picks_vllm_where_a_gpu_and_vllm_are_present(monkeypatch):
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: True)
    assert select_engine(settings(), gpu_available=True) == ("vllm", "qwen3.6-35b-a3b-mxfp4")
    assert select_engine(settings(model="qwen-x"), gpu_available=True) == ("vllm", "qwen-x")
    assert select_engine(settings(), gpu_available=False)[0] == "embedded"


@needs_no_vllm
def test_asking_for_vllm_without_it_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="needs vLLM"):
        select_engine(settings(engine="vllm"))


def test_an_unreachable_endpoint_without_a_model_name_fails_at_selection():
    s = settings(engine="openai", openai_base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match="cannot reach"):
        select_engine(s)
    with pytest.raises(ConfigError, match="ORCH_OPENAI_BASE_URL"):
        select_engine(settings(engine="openai"))


def test_embedded_and_scripted_model_ids(tmp_path):
    with pytest.raises(ConfigError, match="neither"):
        select_engine(settings(engine="embedded", model="llama-70b"))
    assert select_engine(settings(engine="scripted")) == ("scripted", "scripted")
    script = tmp_path / "script.json"
    assert select_engine(settings(engine="scripted", model=str(script))) == ("scripted", str(script))


def test_the_scripted_engine_loads_its_script_from_the_model_setting(tmp_path):
    script = tmp_path / "script.json"
    script.write_text('{"replies": [{"text": "ok"}], "model": "scripted-v1"}')
    engine = make_engine("scripted", settings(engine="scripted", model=str(script)))
    assert engine.model == "scripted-v1"
    with pytest.raises(ConfigError, match="needs a script"):
        make_engine("scripted", settings(engine="scripted"))
    with pytest.raises(ValueError, match="bad script"):
        make_engine("scripted", settings(), script='{"replies": "none"}')


def test_vllm_config_carries_the_settings_and_ray_accepts_it():
    s = settings(vllm_replicas=3, vllm_gpus=2, max_streams=32, vllm_model_source="/models/qwen")
    config = vllm_engine.vllm_config(s)
    checked = vllm_engine.check_config(config)  # Ray's own LLMConfig model
    assert checked.model_id == "qwen3.6-35b-a3b-mxfp4"
    assert checked.model_loading_config.model_source == "/models/qwen"
    assert checked.llm_engine == "vLLM"
    assert checked.engine_kwargs["tensor_parallel_size"] == 2
    assert checked.engine_kwargs["max_num_seqs"] == 32
    assert checked.engine_kwargs["enable_auto_tool_choice"] is True
    assert checked.deployment_config["num_replicas"] == 3
    assert checked.deployment_config["max_ongoing_requests"] == 32


def test_vllm_config_without_a_source_loads_the_model_id():
    checked = vllm_engine.check_config(vllm_engine.vllm_config(settings(model="Qwen/Qwen3-8B")))
    assert checked.model_id == "Qwen/Qwen3-8B"
    assert checked.model_loading_config.model_source is None


def test_bad_vllm_settings_are_refused():
    with pytest.raises(ConfigError, match="ORCH_VLLM_GPUS=0"):
        settings(vllm_gpus=0)
    # Settings built in code skip load's bounds; the vLLM configuration checks them again.
    with pytest.raises(ValueError, match="at least 1"):
        vllm_engine.vllm_config(Settings(data_dir="/nonexistent", vllm_gpus=0))
    config = vllm_engine.vllm_config(settings())
    config["deployment_config"]["num_replicas"] = "many"
    with pytest.raises(ValueError, match="bad vLLM configuration"):
        vllm_engine.check_config(config)


def test_the_vllm_engine_is_only_built_behind_serve():
    with pytest.raises(ConfigError, match="start_model"):
        make_engine("vllm", settings(engine="vllm"))


@needs_no_vllm
def test_building_the_vllm_app_without_vllm_says_what_to_install():
    from actors.engines.base import EngineError

    with pytest.raises(EngineError, match="orchestrator\\[vllm\\]"):
        vllm_engine.build_llm_app(settings(), "model")


def test_ray_serve_llm_stream_items_are_read_like_an_openai_stream():
    # LLMServer.chat yields batches (lists) of "data: {...}\n\n" strings, or error objects.
    from actors.engines.openai import Assembler

    def data(chunk):
        return "data: " + json.dumps(chunk) + "\n\n"

    items = [
        [data({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
         data({"choices": [{"index": 0, "delta": {"content": "lo"}}]})],
        [data({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
         data({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}) + "data: [DONE]\n\n"],
    ]  # fmt: skip
    asm, texts = Assembler(), []
    for item in items:
        for part in item:
            for chunk in vllm_engine._chunks(part):
                delta = asm.feed(chunk)
                if delta is not None:
                    texts.append(delta.text)
    last = asm.done()
    assert texts == ["Hel", "lo"] and last.finish_reason == "stop"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (5, 2)

    class ErrorResponse:  # the shape of Ray Serve LLM's error object
        def model_dump(self):
            return {"object": "error", "message": "prompt too long", "code": 400}

    from actors.engines.base import EngineError

    (chunk,) = vllm_engine._chunks(ErrorResponse())
    with pytest.raises(EngineError, match="prompt too long") as info:
        Assembler().feed(chunk)
    assert not info.value.retryable

    class NewerErrorResponse:  # newer vLLM nests it: {"error": {...}}
        def model_dump(self):
            return {"error": {"message": "engine overloaded", "type": "ServiceUnavailable", "code": 503}}

    (chunk,) = vllm_engine._chunks(NewerErrorResponse())
    with pytest.raises(EngineError, match="engine overloaded") as info:
        Assembler().feed(chunk)
    assert info.value.retryable


def test_the_guard_in_front_of_vllm_admits_every_replicas_streams():
    from actors.engines import guarded

    class FakeVLLM:  # stands in for VLLMEngine, which needs a running Ray Serve LLM app
        name, model, supports_tools, supports_continue = "vllm", "q", True, True

    s = settings(max_streams=8, vllm_replicas=3, model_timeout=30.0)
    g = guarded(FakeVLLM(), s)
    assert g.max_streams == 24 and g.timeout == 30.0 and g.first_token_timeout == 30.0
    assert guarded(make_engine("scripted", s, script={"replies": []}), s).max_streams == 8
