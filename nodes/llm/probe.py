"""Check in a child process that the embedded llama.cpp runs on this CPU, before trusting it.

llama.cpp is native code compiled for an instruction set. A build that takes a path this CPU
mishandles dies with SIGSEGV or SIGILL and takes the whole Python process with it: a native
(`-march=native`) build on a Sapphire Rapids Xeon took llama.cpp's AMX path for the Q4_1 weights
and crashed in its first decode, and a wheel built for one CPU can hit an illegal instruction on
another. A child process can die instead, so the parent can say in one line what happened and
how to rebuild, and nothing the parent was doing is lost.

The child loads the model exactly as a run does (`nodes.llm.local.open_llama`) and decodes a few
tokens under the project's own grammar sampler (`LazyGrammar`). A pass is remembered on disk,
keyed by the llama.cpp libraries, the weights file, this CPU's flags and the interpreter, so
later runs pay a few `stat` calls; a failure is never remembered (the user may fix it).

python -m nodes.llm.probe [--verbose] [MODEL.gguf]   # exit 0 + the build, or exit 2 + the reason
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nodes.llm.calls import LLMError

ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni", "avx512f", "avx512bw",
    "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "sve", "sve2",
)  # fmt: skip
"""The CPU flags llama.cpp's kernels choose between: what the one line names."""
REBUILD_HINT = (
    "rebuild it portably with `make rebuild-llama` (README, 'The embedded model on your CPU')"
)
PROBE_TIMEOUT_S = 300.0
"""A child that neither answers nor dies within this long is reported as hung."""
CACHE_ENV = "BILLP_CACHE"

_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*:")
_PASSED: set[str] = set()
_LOCK = threading.Lock()


class LocalModelCrashError(LLMError):
    """The embedded llama.cpp crashed (or hung) in the probe: every local call would too."""


@dataclass(frozen=True)
class ProbeResult:
    """What the child process did with the embedded model."""

    ok: bool
    line: str
    """One line: the build that passed, or what crashed, on which CPU, and how to rebuild."""
    system_info: str | None
    """llama.cpp's own `llama_print_system_info()` of the installed build (None if unknown)."""
    seconds: float
    stage: str
    """The last stage the child reached: start, imported, loaded, decoded."""
    stderr_tail: str = ""


def cpu_description() -> str:
    """Return the CPU model and the ISA flags llama.cpp picks kernels by: `Xeon [avx2 amx_int8]`."""
    model, flags = platform.processor() or platform.machine() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model", "cpu model") and model in ("", platform.machine()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    named = [f for f in ISA_FLAGS if f in flags]
    return f"{model} [{' '.join(named) or 'flags unknown'}]"


def _library_files() -> list[Path]:
    """Return llama-cpp-python's native libraries without importing it (it loads them)."""
    spec = importlib.util.find_spec("llama_cpp")
    folders = [Path(p) / "lib" for p in (spec.submodule_search_locations or [])] if spec else []
    return sorted(p for folder in folders if folder.is_dir() for p in folder.iterdir())


def fingerprint(model_path: Path) -> str:
    """Return what a pass is valid for: libraries, weights, CPU flags, interpreter."""
    from storage.files import sha256_bytes

    parts = [sys.executable, cpu_description(), str(model_path.resolve())]
    for path in [*_library_files(), model_path]:
        try:
            st = path.stat()
        except OSError:
            continue
        parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    return sha256_bytes("\n".join(parts).encode())[:24]


def _cache_file(key: str) -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "billp")
    return root.expanduser() / "llama-probe" / f"{key}.json"


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _last_error(stderr: str) -> str | None:
    """Return the child's last `SomeError: message` line (tracebacks end with it)."""
    errors = [ln.strip() for ln in stderr.splitlines() if _ERROR_LINE.match(ln.strip())]
    return errors[-1][:200] if errors else None


def run_probe(model_path: Path, timeout: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Run the child (`python -m nodes.llm.probe --child MODEL`) and read what it reported."""
    started = time.perf_counter()
    cmd = [
        sys.executable,
        "-X",
        "faulthandler",
        "-m",
        "nodes.llm.probe",
        "--child",
        str(model_path),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        code = None
    seconds = time.perf_counter() - started
    report: dict[str, str] = {}
    for line in stdout.splitlines():
        try:
            report.update(json.loads(line))
        except ValueError:
            continue
    stage, info = report.get("stage", "start"), report.get("system_info")
    tail = "\n".join(stderr.strip().splitlines()[-12:])
    build = f"llama-cpp-python {report.get('version', '?')} built with: {info or 'unknown'}"
    if code == 0 and stage == "decoded":
        return ProbeResult(True, f"ok: the embedded model decodes on {cpu_description()}; {build}",
                           info, seconds, stage, tail)  # fmt: skip
    if code is None:
        what = f"hung (no answer within {timeout:.0f} s)"
    elif code < 0:
        what = f"crashed ({_signal_name(code)})"
    else:
        what = f"failed ({_last_error(stderr) or f'exit {code}'})"
    doing = {"start": "importing llama_cpp", "imported": "loading the model"}.get(stage, "decoding")
    line = (
        f"the embedded model {what} in llama.cpp while {doing} on this CPU: "
        f"{cpu_description()}; {build}; {REBUILD_HINT}"
    )
    return ProbeResult(False, " ".join(line.split()), info, seconds, stage, tail)


def ensure_local_model_works(model_path: str | os.PathLike) -> None:
    """Probe `model_path` once per process (and once per build on disk); raise on failure.

    Raises `LocalModelCrashError` with the probe's one line: every entry point that is about to
    load llama.cpp in-process calls this first, so a native crash costs a child, not the run.
    """
    path = Path(model_path)
    key = fingerprint(path)
    with _LOCK:
        if key in _PASSED:
            return
        cached = _cache_file(key)
        if cached.is_file():
            _PASSED.add(key)
            return
        result = run_probe(path)
        if not result.ok:
            raise LocalModelCrashError(result.line)
        from storage.files import atomic_write_json

        atomic_write_json(cached, {"line": result.line, "seconds": round(result.seconds, 2)})
        _PASSED.add(key)


def ensure_llm_works(spec: str) -> None:
    """Probe the model a `local[:PATH.gguf]` spec names; other specs load no native code here."""
    kind, _, arg = spec.strip().partition("?")[0].partition(":")
    if kind == "local":
        from nodes.llm.local import find_local_model

        ensure_local_model_works(find_local_model(arg or None))


def forget_probes() -> None:
    """Forget this process's passes (a fresh process would re-read the disk cache)."""
    with _LOCK:
        _PASSED.clear()


def _child(model_path: str) -> None:
    """Load the model as a run does and decode a few tokens under the grammar sampler."""

    def say(**fields: str) -> None:
        print(json.dumps(fields), flush=True)  # flushed at once: the next line may crash

    say(stage="start")
    import llama_cpp

    say(stage="imported", version=llama_cpp.__version__,
        system_info=llama_cpp.llama_print_system_info().decode().strip())  # fmt: skip
    from nodes import prompts
    from nodes.llm.grammar import LazyGrammar
    from nodes.llm.local import default_threads, open_llama

    llama = open_llama(model_path, n_ctx=512, n_threads=default_threads())
    say(stage="loaded")
    grammar = LazyGrammar(llama, prompts.Value.model_json_schema(), temperature=0.5, seed=0)
    try:
        out = llama.create_chat_completion(
            messages=[{"role": "user", "content": "Rate the session so far from -5 to 5."}],
            max_tokens=12,
            temperature=0.5,
            seed=0,
            logits_processor=[grammar],
        )
    finally:
        grammar.close()
    say(stage="decoded", answer=out["choices"][0]["message"].get("content") or "")


def main(argv: list[str] | None = None) -> int:
    """Probe the embedded model (or MODEL); print one line; return 0 or 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args
    args = [a for a in args if a != "--verbose"]
    if args[:1] == ["--child"]:
        _child(args[1])
        return 0
    from nodes.llm.local import find_local_model

    try:
        path = find_local_model(args[0] if args else None)
    except (FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = run_probe(path)
    if not result.ok:
        print(f"error: {result.line}", file=sys.stderr)
        if verbose and result.stderr_tail:
            print(f"(child's last output)\n{result.stderr_tail}", file=sys.stderr)
        return 2
    from storage.files import atomic_write_json

    atomic_write_json(_cache_file(fingerprint(path)), {"line": result.line})
    print(f"{result.line} ({result.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
