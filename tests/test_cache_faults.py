"""The on-disk caches under faults: a cache folder that cannot be used (a file, a path below a file, a
read-only place), damaged or planted kernel files, a folder others can write, corrupt tuning and AOT
results. Each run goes on, with a private temporary cache and one warning line where it must, and never
ends in a traceback; planted code never runs.

Tests run as root, where file modes do not stop writes: the unusable folders here are ones that refuse
root too (a regular file, a path below one, /proc and /sys)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from axon.codegen import aot, cache, compile_group, groups
from axon.codegen.cachedir import ensure_cache_dir, fallback_dir
from axon.codegen.groups import CodegenError
from axon.ir import DType, GraphBuilder, Sym
from axon.runtime import tune

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AXON_CACHE_DIR", str(tmp_path / "kernels"))
    monkeypatch.setattr(cache, "_LOADED", {})  # each test loads its kernels from the files it sets up


def _group(shift: float = 1.5):
    """A one-kernel graph, y = x + shift: another `shift`, another kernel (the constant is in its code)."""
    b = GraphBuilder()
    x = b.input("x", DType.F32, (Sym.of("batch"), 19))
    b.output("y", b.add(x, shift))
    graph = b.build()
    (group,) = groups(graph)
    return graph, group


def _check_runs(kernel, graph, shift: float = 1.5) -> None:
    x = torch.randn(5, 19)
    (out,) = kernel.run({graph.inputs["x"]: x}, {"batch": 5}, poison=True).values()
    torch.testing.assert_close(out, x + shift)


def _entry(group) -> tuple[str, str]:
    """The cache file name of `group`'s kernel and its source, without compiling."""
    source = cache.spec_for(group).source()
    return f"k_{cache.cache_key(source, cache.target())[:40]}.py", source


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("axon: warning:")]


def test_cache_folder_and_its_parents_are_made_private(tmp_path, monkeypatch, capsys):
    wanted = tmp_path / "a" / "b" / "kernels"
    monkeypatch.setenv("AXON_CACHE_DIR", str(wanted))
    assert ensure_cache_dir() == wanted and ensure_cache_dir() is ensure_cache_dir()
    for folder in (tmp_path / "a", tmp_path / "a" / "b", wanted):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert list(wanted.iterdir()) == []  # the write probe is gone
    graph, group = _group()
    kernel = compile_group(group)
    assert kernel.path.parent == wanted and stat.S_IMODE(kernel.path.stat().st_mode) & 0o077 == 0
    _check_runs(kernel, graph)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("where", ["a file", "below a file", "/proc", "/proc/axon-cache", "/sys"])
def test_an_unusable_cache_folder_falls_back_with_one_warning(where, tmp_path, monkeypatch, capsys):
    afile = tmp_path / "not-a-folder"
    afile.write_text("x")
    named = {"a file": afile, "below a file": afile / "kernels"}.get(where, Path(where))
    monkeypatch.setenv("AXON_CACHE_DIR", str(named))
    used = ensure_cache_dir()
    assert used == fallback_dir() and used.is_dir() and stat.S_IMODE(used.stat().st_mode) == 0o700
    assert ensure_cache_dir() == used
    graph, group = _group()
    kernel = compile_group(group)
    assert kernel.path.parent == used
    _check_runs(kernel, graph)
    assert tune.Store.for_device("Fake GPU").path.parent == used / "tune"
    (line,) = _warnings(capsys.readouterr().err)
    assert line.startswith(f"axon: warning: kernel cache {named} ") and "private temporary cache" in line
    assert afile.read_text() == "x"


@pytest.mark.parametrize("content", ["empty", "not empty"])
def test_a_folder_at_a_kernels_path(content, capsys):
    graph, group = _group()
    name, source = _entry(group)
    blocker = ensure_cache_dir() / name
    blocker.mkdir()
    if content == "not empty":
        (blocker / "keep.txt").write_text("someone's file")
    kernel = compile_group(group)
    _check_runs(kernel, graph)
    warnings = _warnings(capsys.readouterr().err)
    if content == "empty":  # removed and written in its place
        assert kernel.path == blocker and blocker.is_file() and not warnings
    else:  # left alone; this kernel goes to the private temporary cache
        assert kernel.path == fallback_dir() / name and (blocker / "keep.txt").exists()
        assert len(warnings) == 1 and str(blocker) in warnings[0] and "not empty" in warnings[0]
    assert cache.is_intact(kernel.path.read_text())


def test_a_kernel_file_with_flipped_bytes_is_rewritten():
    graph, group = _group()
    path = compile_group(group).path
    whole = path.read_bytes()
    damaged = bytearray(whole)
    for i in (len(whole) // 3, len(whole) // 2):
        damaged[i] ^= 0x01
    path.write_bytes(bytes(damaged))
    cache._LOADED.clear()
    kernel = compile_group(group)
    assert kernel.path == path and path.read_bytes() == whole
    _check_runs(kernel, graph)


def _plant(path: Path, source: str, marker: Path) -> None:
    """Other code at `path` with a valid checksum: importing it writes `marker`, and its kernel is wrong."""
    planted = (f"open({str(marker)!r}, 'w').write('ran')\n"
               + source.replace("add1 = ", "add1 = -1.0 * "))
    path.write_text(cache._with_checksum(planted))
    assert cache.is_intact(path.read_text())


@pytest.mark.parametrize("writable", [0o770, 0o777], ids=["group-writable", "world-writable"])
def test_planted_code_in_a_folder_others_can_write_never_runs(writable, tmp_path, monkeypatch, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, writable)
    monkeypatch.setenv("AXON_CACHE_DIR", str(shared))
    graph, group = _group(2.5)
    name, source = _entry(group)
    marker = tmp_path / "planted-code-ran"
    _plant(shared / name, source, marker)
    kernel = compile_group(group)
    _check_runs(kernel, graph, 2.5)
    assert not marker.exists() and kernel.path == fallback_dir() / name
    (line,) = _warnings(capsys.readouterr().err)
    assert f"kernel cache {shared} is writable by group or others" in line
    with pytest.raises(CodegenError, match="writable by group or others"):
        cache.load_kernel(shared / name, kernel.spec.name)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["group-writable file", "other code, private file"])
def test_planted_code_in_the_private_folder_is_replaced(how, tmp_path, capsys):
    graph, group = _group(3.5)
    name, source = _entry(group)
    path = ensure_cache_dir() / name
    marker = tmp_path / "planted-code-ran"
    _plant(path, source, marker)
    os.chmod(path, 0o666 if how == "group-writable file" else 0o600)
    kernel = compile_group(group)
    _check_runs(kernel, graph, 3.5)
    assert not marker.exists() and kernel.path == path
    assert path.read_text() == cache._with_checksum(source)
    assert stat.S_IMODE(path.stat().st_mode) & 0o022 == 0
    assert _warnings(capsys.readouterr().err) == []


@pytest.mark.parametrize("damage", ["not json", "binary", "a list", "deeply nested", "a folder"])
def test_a_corrupt_tune_store_is_ignored_and_rewritten(damage):
    store_path = tune.Store.for_device("Fake GPU").path
    store_path.parent.mkdir(parents=True, exist_ok=True)
    if damage == "a folder":
        store_path.mkdir()
    else:
        store_path.write_bytes({"not json": b'{"k": {"config": ', "binary": b"\xff\xfe\x00\x81",
                                "a list": b"[1, 2]", "deeply nested": b"[" * 100_000}[damage])
    store = tune.Store.for_device("Fake GPU")
    assert store.choices == {} and store.get("k") is None
    configs = ({"BLOCK": 16}, {"BLOCK": 32})
    launch = cache.Launch((1,), (), (), (), configs[0], configs)
    tuned, _ = tune.choose(launch, "k", store, lambda c: (32, 0), lambda c: 1.0 / c["BLOCK"])
    assert tuned.meta == {"BLOCK": 32}
    if damage == "a folder":  # cannot be replaced: the choice holds for this process only
        assert store_path.is_dir()
    else:
        assert json.loads(store_path.read_text())["k"]["config"] == {"BLOCK": 32}
        assert tune.Store.for_device("Fake GPU").get("k") == {"BLOCK": 32}


def test_a_corrupt_aot_result_is_ignored_and_rewritten():
    key = "0" * 40
    path = ensure_cache_dir() / "aot" / f"{key}.json"
    path.parent.mkdir(parents=True)
    for damaged in (b'{"ok": tru', b"\xff\x00", b"[" * 100_000, b'{"ok": false}'):
        path.write_bytes(damaged)
        assert aot.saved(key) is None
    aot._save(path, {"ok": True, "regs": 32})
    assert aot.saved(key) == {"ok": True, "regs": 32}


def test_cli_run_with_the_cache_folder_naming_a_file(tmp_path):
    afile = tmp_path / "cache-is-a-file"
    afile.write_text("")
    env = {**os.environ, "AXON_CACHE_DIR": str(afile)}
    model = str(REPO / "examples" / "perceptron.axon")
    done = subprocess.run([sys.executable, "-m", "axon.cli", "run", model, "--check"], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (line,) = _warnings(done.stderr)
    assert line == (f"axon: warning: kernel cache {afile} is not a folder; using a private temporary cache "
                    f"for this run")
    assert "check logit: max |error| 0" in done.stdout and done.stdout.rstrip().endswith("ok")
