"""The server's native allocator (rt_portrait/server/memory.py): jemalloc when installed,
glibc tuned otherwise. Process-wide settings, so each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from rt_portrait.server import memory
from rt_portrait.server.memory import AllocatorError, jemalloc_library, use_allocator

linux_glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator controls"
)
needs_jemalloc = pytest.mark.skipif(
    jemalloc_library() is None, reason="libjemalloc2 is not installed (.ci/run installs it)"
)


def _python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter, without allocator settings from this one's environment."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD", "RT_PORTRAIT_ALLOCATOR_REEXEC")
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@linux_glibc
def test_malloc_tuning_applies_unless_the_environment_sets_it() -> None:
    def applied(arenas: int, mmap_kb: int, **env: str) -> dict[str, bool]:
        code = (
            "import json; from rt_portrait.server.memory import tune_malloc; "
            f"print(json.dumps(tune_malloc({arenas}, {mmap_kb})))"
        )
        return json.loads(_python(code, **env))

    assert applied(2, 0) == {"arenas": True, "mmap_threshold": False}
    assert applied(0, 128) == {"arenas": False, "mmap_threshold": True}
    assert applied(2, 128, MALLOC_ARENA_MAX="4", MALLOC_MMAP_THRESHOLD_="65536") == {
        "arenas": False,
        "mmap_threshold": False,
    }, "the environment's settings must win"


@linux_glibc
@needs_jemalloc
def test_auto_reexecutes_once_on_jemalloc_and_keeps_the_pid() -> None:
    code = (
        "import os, sys; from rt_portrait.server.memory import loaded_allocator, use_allocator, tune_malloc, "
        "trim_native_heap; print('start', os.getpid(), loaded_allocator(), flush=True); "
        "got = use_allocator('auto'); x = bytearray(50_000_000); del x; trim_native_heap(); "
        "print(os.getpid(), got, loaded_allocator(), os.environ.get('MALLOC_CONF'), tune_malloc(2, 0)['arenas'])"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "RT_PORTRAIT_ALLOCATOR_REEXEC")}
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    starts = [line.split() for line in lines if line.startswith("start")]
    # started on glibc, replaced itself once (same pid), then ran on jemalloc
    assert [s[2] for s in starts] == ["glibc", "jemalloc"], lines
    assert starts[0][1] == starts[1][1]
    pid, got, loaded, conf, tuned = lines[-1].split()
    assert (pid, got, loaded) == (starts[0][1], "jemalloc", "jemalloc")
    assert conf == memory.JEMALLOC_CONF
    assert tuned == "False", "glibc's mallopt must not be reported as applied under jemalloc"


@linux_glibc
def test_glibc_choice_never_switches() -> None:
    assert (
        _python("from rt_portrait.server.memory import use_allocator; print(use_allocator('glibc'))")
        == "glibc"
    )


def test_missing_jemalloc_is_a_clear_error_only_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "JEMALLOC", "jemalloc-not-here")
    monkeypatch.delenv("RT_PORTRAIT_ALLOCATOR_REEXEC", raising=False)
    if memory.loaded_allocator() == "jemalloc":
        pytest.skip("this interpreter already runs on jemalloc")
    with pytest.raises(AllocatorError, match="libjemalloc-not-here not found"):
        use_allocator("jemalloc")
    assert use_allocator("auto") == "glibc"  # falls back without replacing the process
    with pytest.raises(AllocatorError, match="unknown allocator 'tcmalloc'"):
        use_allocator("tcmalloc")  # type: ignore[arg-type]
