"""The ``vllm`` engine: Qwen on GPU nodes through Ray Serve LLM (``ray.serve.llm``).

``vllm_config(settings)`` is the ``LLMConfig`` as plain data (model, replicas, GPUs per replica,
streams per replica); ``build_llm_app`` turns it into a Serve application of ``LLMServer``
deployments. ``VLLMEngine`` speaks to that deployment through its handle with the same OpenAI
chat body the ``openai`` engine sends, and reads the same stream chunks. Ray Serve LLM needs the
``ray[llm]`` extra (vLLM itself), which is imported only here and only when used.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from actors.config import Settings
from actors.engines.base import ChatRequest, Delta, EngineError, check_request
from actors.engines.openai import Assembler, cut_stream, parse_event, request_body

# Qwen's tool calls are Hermes-style; vLLM needs both flags to return native tool calls.
TOOL_CALL_PARSER = "hermes"


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def gpu_available() -> bool:
    """A GPU in the Ray cluster when Ray is up, else on this machine."""
    try:
        import ray

        if ray.is_initialized():
            return ray.cluster_resources().get("GPU", 0) > 0
    except Exception:
        pass
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def vllm_config(settings: Settings) -> dict[str, Any]:
    """The ``ray.serve.llm.LLMConfig`` fields for this run's model, as plain data."""
    if settings.vllm_replicas < 1 or settings.vllm_gpus < 1 or settings.max_streams < 1:
        raise ValueError("vllm_replicas, vllm_gpus and max_streams must each be at least 1")
    return {
        "model_loading_config": {
            "model_id": settings.model or settings.vllm_model,
            # Where the weights are (a local path or a hub id); by default the model id.
            "model_source": settings.vllm_model_source or None,
        },
        "llm_engine": "vLLM",
        "engine_kwargs": {
            # One replica spans this many GPUs (tensor parallel); Ray Serve LLM places them.
            "tensor_parallel_size": settings.vllm_gpus,
            "max_num_seqs": settings.max_streams,
            "enable_auto_tool_choice": True,
            "tool_call_parser": TOOL_CALL_PARSER,
        },
        "deployment_config": {
            "num_replicas": settings.vllm_replicas,
            # Beyond this a replica's requests queue in the router: backpressure, not errors.
            "max_ongoing_requests": settings.max_streams,
        },
    }


def llm_config_class() -> type:
    """Ray's ``LLMConfig``: the public one with ``ray[llm]``, else its definition in Ray.

    ``ray.serve.llm`` cannot be imported without vLLM, but the class it re-exports can, so a
    config is checked against Ray's own model even on a machine with no GPU.
    """
    try:
        from ray.serve.llm import LLMConfig
    except ImportError:
        from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
    return LLMConfig


def check_config(config: dict[str, Any]) -> Any:
    """Validate ``config`` with Ray's ``LLMConfig``; a bad field is a ``ValueError``."""
    try:
        return llm_config_class()(**config)
    except Exception as exc:  # pydantic's ValidationError
        raise ValueError(f"bad vLLM configuration: {exc}") from None


def build_llm_app(settings: Settings, name: str) -> Any:
    """The Ray Serve LLM application (``LLMServer`` deployments) for ``settings``."""
    if not vllm_available():
        raise EngineError("the vllm engine needs vLLM: pip install 'orchestrator[vllm]'")
    from ray.serve.llm import LLMConfig, build_llm_deployment

    return build_llm_deployment(LLMConfig(**vllm_config(settings)), name_prefix=f"{name}-")


class VLLMEngine:
    """Streams from a Ray Serve LLM ``LLMServer`` deployment handle."""

    name = "vllm"
    supports_tools = True
    supports_continue = True  # vLLM's continue_final_message

    def __init__(self, handle: Any, model: str):
        self._handle = handle.options(stream=True)
        self.model = model

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        check_request(self, req)
        body = request_body(req, self.model, can_continue=True)
        asm = Assembler()
        async for item in self._handle.chat.remote(ChatCompletionRequest(**body)):
            # Batched streams yield lists of SSE strings; errors come as objects.
            for part in item if isinstance(item, list) else [item]:
                for chunk in _chunks(part):
                    delta = asm.feed(chunk)
                    if delta is not None:
                        yield delta
        if asm.finish is None:  # as in the openai engine: no finish reason, no whole answer
            raise cut_stream()
        yield asm.done()

    async def close(self) -> None:
        return None


def _chunks(part: Any) -> list[dict[str, Any]]:
    """The JSON chunks in one streamed item: SSE text, or an error/response object."""
    if not isinstance(part, str):
        data = part.model_dump() if hasattr(part, "model_dump") else dict(part)
        if "error" in data or data.get("object") == "error":
            return [{"error": data.get("error", data)}]
        return [data]
    out = []
    for line in part.splitlines():
        line = line.strip()
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            out.append(parse_event(line[5:].strip()))
    return out
