"""A llama.cpp that crashes on this CPU fails one child with one clear line, never the run.

The crashing build is a stand-in package (`tests/fixtures/crashing_llama_cpp`) put first on
PYTHONPATH: the probe's child then loads "the model" as a run does and dies with SIGSEGV in its
first decode, as llama.cpp's AMX path did on a Sapphire Rapids Xeon.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nodes.llm import probe

ROOT = Path(__file__).resolve().parent.parent
CRASHING = Path(__file__).parent / "fixtures" / "crashing_llama_cpp"
FAKE_WEIGHTS_NAME = "model.gguf"
# What `make test` passes to pytest (the Makefile's test target), checked below.
ISOLATED_RUNNER = ["-n", "1", "--max-worker-restart=20"]


def crashing_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine whose llama.cpp segfaults in its first decode."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(CRASHING), str(ROOT)]))
    env["BILLP_CACHE"] = str(tmp_path / "cache")
    return env


def fake_weights(tmp_path: Path) -> Path:
    path = tmp_path / FAKE_WEIGHTS_NAME
    path.write_bytes(b"GGUF")  # never parsed: the stand-in llama_cpp crashes first
    return path


def assert_one_clear_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    crash = [ln for ln in lines if "crashed (SIGSEGV)" in ln]
    assert len(crash) == 1, text
    line = crash[0]
    assert "while decoding" in line
    assert "AMX_INT8 = 1" in line  # the build's own system info
    assert re.search(r"\[[a-z0-9_ ]*\]", line)  # the CPU's ISA flags
    assert "make rebuild-llama" in line
    assert "Segmentation fault" not in text and "Traceback" not in text
    return line


def test_probe_cli_turns_a_segfault_into_exit_2_and_one_line(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nodes.llm.probe", str(fake_weights(tmp_path))],
        env=crashing_env(tmp_path),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert assert_one_clear_line(proc.stderr).startswith("error: the embedded model crashed")
    verbose = subprocess.run(
        [sys.executable, "-m", "nodes.llm.probe", "--verbose", str(fake_weights(tmp_path))],
        env=crashing_env(tmp_path),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert verbose.returncode == 2 and "create_chat_completion" in verbose.stderr  # the frames


def test_a_crash_raises_and_is_never_remembered(tmp_path, monkeypatch) -> None:
    for key, value in crashing_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    probe.forget_probes()
    weights = fake_weights(tmp_path)
    for _ in range(2):  # the second call probes again: the user may have fixed the build
        with pytest.raises(probe.LocalModelCrashError, match=r"crashed \(SIGSEGV\)"):
            probe.ensure_local_model_works(weights)
    assert not (tmp_path / "cache" / "llama-probe").exists()


def test_a_pass_is_remembered_per_build(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BILLP_CACHE", str(tmp_path))
    probe.forget_probes()
    weights = fake_weights(tmp_path)
    calls: list[Path] = []

    def passing(path: Path, timeout: float = 0) -> probe.ProbeResult:
        calls.append(path)
        return probe.ProbeResult(True, "ok", "CPU : AVX2 = 1 |", 0.1, "decoded")

    monkeypatch.setattr(probe, "run_probe", passing)
    probe.ensure_local_model_works(weights)
    probe.ensure_local_model_works(weights)  # this process remembers
    probe.forget_probes()
    probe.ensure_local_model_works(weights)  # a new process reads the disk
    assert len(calls) == 1
    weights.write_bytes(b"GGUF v2")  # other weights: probed again
    os.utime(weights, ns=(1, 1))
    probe.ensure_local_model_works(weights)
    assert len(calls) == 2
    probe.forget_probes()


def test_only_local_specs_are_probed(monkeypatch) -> None:
    monkeypatch.setattr(probe, "ensure_local_model_works", lambda path: pytest.fail("probed"))
    for spec in ("scripted", "scripted?faults=malformed", "openai:gpt-4o-mini"):
        probe.ensure_llm_works(spec)


@pytest.mark.slow
def test_billp_run_exits_2_with_the_line_before_any_work(tmp_path) -> None:
    out = tmp_path / "run"
    env = crashing_env(tmp_path)
    env["BILLP_LOCAL_MODEL"] = str(fake_weights(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "eval.cli", "run", "--method", "billp", "--llm", "local",
         "--dataset", "synthetic", "--embeddings", "hashing", "--out", str(out)],
        env=env, capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert_one_clear_line(proc.stdout + proc.stderr)
    assert not (tmp_path / "cache" / "envs").exists()  # probed before the env build
    assert not out.exists()  # nothing to resume: the same command starts afresh once fixed


def test_make_test_isolates_native_crashes() -> None:
    """`make test` runs pytest with ISOLATED_RUNNER (a worker process pytest-xdist replaces)."""
    recipe = (ROOT / "Makefile").read_text().split("\ntest: install\n", 1)[1].split("\n\n")[0]
    assert all(arg in recipe for arg in ISOLATED_RUNNER)


@pytest.mark.slow
def test_a_segfault_in_one_test_fails_that_test_and_the_suite_goes_on(tmp_path) -> None:
    (tmp_path / "test_native.py").write_text(
        "import ctypes\n\n"
        "def test_before():\n    pass\n\n"
        "def test_native_crash():\n    ctypes.string_at(0)\n\n"
        "def test_after():\n    pass\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ISOLATED_RUNNER,
         str(tmp_path / "test_native.py")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 2 passed" in proc.stdout
    assert "crashed while running" in proc.stdout and "test_native_crash" in proc.stdout
