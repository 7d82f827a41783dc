"""Corrupt or truncated files: one line naming the file and the way to recover, never a crash.

Artifacts that can be recomputed (embedding caches, a cached environment) are rebuilt with a
warning; artifacts that hold learning (memories, the learned critic) are refused with a message
that says how to recover, since silently starting over would lose what was learnt.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import simulator.build as build
from memory.embeddings import HashingEmbeddings, cached_embed
from memory.stores import MacroMemory
from memory.vector import ENTRIES_FILE, INDEX_FILE, MemoryCorruptError
from nodes.value_net import LearnedCritic
from simulator.build import EnvConfig, build_env, load_env
from simulator.user_model import ModelFileError, UserModel
from storage.files import sha256_bytes

EMB = HashingEmbeddings(32)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def empty(path: Path) -> None:
    path.write_bytes(b"")


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": truncate,
    "flipped": flip,
    "empty": empty,
    "deleted": Path.unlink,
}


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, f"error spans several lines: {text!r}"
    return text


# ---------------------------------------------------------------- the cached environment


@pytest.fixture(scope="module")
def env_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the built synthetic environment, so damaging it never touches the cache."""
    source = build_env(EnvConfig(dataset="synthetic")).path
    assert source is not None
    target = tmp_path_factory.mktemp("env") / source.name
    shutil.copytree(source, target)
    return target


@pytest.fixture
def env_copy(env_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / env_dir.name
    shutil.copytree(env_dir, target)
    return target


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("name", ["gt_model/model.safetensors", "build.json", "card.json"])
def test_damaged_env_artifact_names_the_file_and_the_rebuild(env_copy, name, damage):
    target = env_copy / name
    if not target.exists():  # the model file's name is the user model's business
        target = next((env_copy / Path(name).parent).glob("*.safetensors"))
    DAMAGE[damage](target)
    with pytest.raises(ValueError) as err:
        load_env(env_copy)
    text = one_line(err.value)
    assert str(target) in text and "--rebuild" in text


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty", "deleted", "{}", "[]"])
def test_damaged_env_manifest_names_the_file(env_copy, damage):
    manifest = env_copy / "manifest.json"
    if damage in DAMAGE:
        DAMAGE[damage](manifest)
    else:
        manifest.write_text(damage)  # valid JSON, wrong shape
    with pytest.raises(ValueError) as err:
        load_env(env_copy)
    text = one_line(err.value)
    assert "manifest.json" in text and "rebuild" in text


def test_build_env_rebuilds_a_corrupt_cache_with_a_warning(env_copy, tmp_path, monkeypatch, caplog):
    config = EnvConfig(dataset="synthetic")
    cache = tmp_path / "cache"
    (cache / "envs").mkdir(parents=True)
    cached = cache / "envs" / f"synthetic-{config.key(None)}"
    shutil.copytree(env_copy, cached)
    truncate(cached / "build.json")
    rebuilt = object()
    monkeypatch.setattr(build, "_build", lambda *a, **k: rebuilt)
    monkeypatch.setattr(build, "_save", lambda bundle, path: None)
    caplog.set_level(logging.WARNING, logger="simulator.build")
    with pytest.raises(AttributeError):  # the sentinel cannot take a path: proof we rebuilt
        build_env(config, cache=cache)
    assert any(
        str(cached) in r.getMessage() and "rebuild" in r.getMessage() for r in caplog.records
    )


# ---------------------------------------------------------------- the user model


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_user_model_names_the_file(env_copy, damage):
    folder = env_copy / "train_model"
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        copy = folder.parent / "probe"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(folder, copy)
        DAMAGE[damage](copy / path.name)
        if damage == "flipped" and path.suffix == ".safetensors":
            # A flipped byte inside the tensor data is still a valid file: only the env manifest's
            # checksum catches it (see the env tests above).
            continue
        with pytest.raises(ModelFileError) as err:
            UserModel.load(copy)
        text = one_line(err.value)
        assert str(copy / path.name) in text and "rebuild" in text


# ---------------------------------------------------------------- memories


def saved_macro(path: Path) -> MacroMemory:
    memory = MacroMemory(EMB, path)
    memory.add("Vary genres sooner.", "history: a | b")
    memory.add("Avoid sequels in a row.", "history: c | d")
    memory.save()
    return memory


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("name", [INDEX_FILE, ENTRIES_FILE])
def test_damaged_memory_is_refused_naming_folder_and_recovery(tmp_path, name, damage):
    folder = tmp_path / "macro"
    saved_macro(folder)
    DAMAGE[damage](folder / name)  # either file alone is an incomplete memory
    with pytest.raises(MemoryCorruptError) as err:
        MacroMemory(EMB, folder)
    text = one_line(err.value)
    assert str(folder) in text and "delete it" in text and "backup" in text


def test_corrupt_memory_stops_a_graph_run_with_its_path(tmp_path):
    from graph import Context
    from nodes.resources import clear_cache, get_resources

    mem = tmp_path / "mem"
    ctx = Context(dataset="synthetic", llm="scripted", embeddings="hashing", memory_dir=str(mem))
    get_resources(ctx).memories.macro.add("A lesson.", "history: x")
    get_resources(ctx).memories.save()
    clear_cache()  # a new process
    truncate(mem / "macro" / ENTRIES_FILE)
    with pytest.raises(MemoryCorruptError, match=str(mem / "macro")):
        get_resources(ctx)


# ---------------------------------------------------------------- embedding cache


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("which", ["array", "sidecar"])
def test_damaged_embedding_cache_is_rebuilt_with_a_warning(tmp_path, caplog, which, damage):
    texts = ["Portal", "Doom", "Tetris"]
    path = tmp_path / "titles.npy"
    want = cached_embed(EMB, texts, path)
    target = path if which == "array" else path.with_name(path.name + ".json")
    DAMAGE[damage](target)
    caplog.set_level(logging.INFO, logger="memory.embeddings")
    again = cached_embed(EMB, texts, path)
    np.testing.assert_array_equal(again, want)
    if damage != "deleted":
        assert any(str(target) in r.getMessage() for r in caplog.records)
    caplog.clear()
    np.testing.assert_array_equal(cached_embed(EMB, texts, path), want)
    assert not caplog.records  # repaired: the next call reads it quietly


def test_embedding_cache_never_unpickles(tmp_path, caplog):
    """An object array with a matching checksum is still refused (np.load allow_pickle=False)."""
    texts = ["Portal", "Doom"]
    path = tmp_path / "titles.npy"
    want = cached_embed(EMB, texts, path)
    buf = io.BytesIO()
    np.save(buf, np.array([{"boom": 1}, None], dtype=object), allow_pickle=True)
    path.write_bytes(buf.getvalue())
    sidecar = path.with_name(path.name + ".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "array_sha256": sha256_bytes(buf.getvalue())}))
    caplog.set_level(logging.WARNING, logger="memory.embeddings")
    np.testing.assert_array_equal(cached_embed(EMB, texts, path), want)
    assert any("does not parse" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- learned critic


@pytest.mark.parametrize("damage", ["truncated", "empty"])
@pytest.mark.parametrize("name", ["value_net.safetensors", "value_net.json"])
def test_damaged_learned_critic_names_the_file_and_recovery(tmp_path, name, damage):
    critic = LearnedCritic(EMB.dim, tmp_path / "value_net")
    critic.update(EMB.embed(["state"])[0], 1.0)
    critic.save()
    DAMAGE[damage](tmp_path / "value_net" / name)
    with pytest.raises(ValueError) as err:
        LearnedCritic(EMB.dim, tmp_path / "value_net")
    text = one_line(err.value)
    assert str(tmp_path / "value_net") in text and "delete" in text
