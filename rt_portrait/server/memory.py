"""The server process's native allocator: jemalloc when the system has it, else glibc tuned.

A live server runs for hours while sessions come and go. Its Python heap stays flat, but the
per-frame arrays (hundreds of KB to MBs, from torch, numpy, the codecs) fragment glibc's heap:
bench/soak.py measured RSS growing by 7 % in 30 minutes with glibc. jemalloc's size classes
and its time-based purging keep it flat at no cost per frame, so ``rt-portrait serve`` re-executes
itself with jemalloc preloaded when the library is installed (Debian: ``apt install
libjemalloc2``), as PyTorch's serving guides recommend. ``--allocator glibc`` opts out.

Measured with bench/soak.py (30 minutes, 4 WHIP sessions at 256, one churned every minute,
the 2-core CPU shared with a training job): glibc's defaults +8.4 % RSS after warm-up; 2 arenas
+7.1 % (115 MB/h); 2 arenas and a fixed 128 KiB mmap threshold +1.9 % but 35-50 % more time per
frame (``rt-portrait bench``: total 34.6 -> 51 ms); a 4 MiB mmap with a 256 MiB trim threshold
+7.4 %. jemalloc with JEMALLOC_CONF: +0.5 % (0.8 MB/h), the fuzz and soak tables in the README.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Allocator = Literal["auto", "jemalloc", "glibc"]
ALLOCATORS: tuple[Allocator, ...] = ("auto", "jemalloc", "glibc")
JEMALLOC = "jemalloc"  # looked up by ctypes.util.find_library, i.e. in the loader's cache
# Background purging returns freed pages within seconds without a call on the frame path.
# oversize_threshold:0 keeps the per-frame fields (the 40-channel condition is 10 MB) out of
# jemalloc's oversize arena, which purges at once: measured (bench/allocator_cost.py) that
# cost the generator stage 16 % in page faults; in the normal arenas they are reused.
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:5000,muzzy_decay_ms:5000,oversize_threshold:0"
_REEXEC_MARK = "RT_PORTRAIT_ALLOCATOR_REEXEC"  # set across the exec, so it happens at most once

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
M_ARENA_MAX = -8


class AllocatorError(RuntimeError):
    """The requested allocator cannot be used in this process."""


def loaded_allocator(pid: int | None = None) -> Literal["jemalloc", "glibc"]:
    """Which malloc this process (or process ``pid``) runs on, from its memory map (Linux);
    glibc where unknown."""
    try:
        maps = Path(f"/proc/{pid or 'self'}/maps").read_text()
    except OSError:
        return "glibc"
    return "jemalloc" if "libjemalloc" in maps else "glibc"


def jemalloc_library() -> str | None:
    """jemalloc's soname where the dynamic loader can find it, else None. Not probed with a
    dlopen: jemalloc's initial-exec TLS only loads at startup, which is why it is preloaded."""
    return ctypes.util.find_library(JEMALLOC)


def use_allocator(choice: Allocator) -> Literal["jemalloc", "glibc"]:
    """Make this process run on ``choice``; may replace the process (same pid and arguments)
    with one that has jemalloc preloaded, so call it before any thread or socket exists.

    - ``auto``: jemalloc when installed, else glibc (tune it with :func:`tune_malloc`).
    - ``jemalloc``: the same, but an :class:`AllocatorError` when it cannot be had.
    - ``glibc``: no change (a jemalloc preloaded from outside stays: the process cannot unload it).
    Returns the allocator the process runs on."""
    if choice not in ALLOCATORS:
        raise AllocatorError(f"unknown allocator {choice!r}: choose one of {', '.join(ALLOCATORS)}")
    current = loaded_allocator()
    if choice == "glibc" or current == "jemalloc":
        return current
    if os.environ.get(_REEXEC_MARK):  # preloaded, yet not mapped: the loader refused it
        if choice == "jemalloc":
            raise AllocatorError("jemalloc was preloaded but is not mapped in this process")
        log.warning("jemalloc was preloaded but is not mapped; running on glibc")
        return current
    library = jemalloc_library()
    if library is None:
        if choice == "jemalloc":
            raise AllocatorError(
                f"--allocator jemalloc: lib{JEMALLOC} not found (Debian: apt install libjemalloc2)"
            )
        log.info("lib%s not found, running on glibc (apt install libjemalloc2 keeps RSS flatter)", JEMALLOC)
        return current
    argv = getattr(sys, "orig_argv", None)  # the interpreter's own command line, -m included
    if not argv:
        return current
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [library, env.get("LD_PRELOAD", "")]))
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    env[_REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
    raise AssertionError("unreachable")  # pragma: no cover - execve does not return


def tune_malloc(arenas: int, mmap_threshold_kb: int = 0) -> dict[str, bool]:
    """Set glibc's allocator up for a long-running server; returns which settings applied.
    An environment variable of the same setting wins (``MALLOC_ARENA_MAX``,
    ``MALLOC_MMAP_THRESHOLD_``); on jemalloc or elsewhere than glibc nothing happens.

    - ``arenas``: glibc gives threads their own arenas, up to 8 per core, and an arena keeps
      its high-water mark; sessions start and end executor threads all day. 0 = glibc's default.
    - ``mmap_threshold_kb``: 0 keeps glibc's dynamic threshold, which rises to the size of each
      large block freed, so the per-frame fields (MBs each) soon come from the heap, where they
      fragment it. A fixed threshold maps and unmaps each large block on its own: RSS stays
      flatter, but every frame pays the page faults (numbers in the module docstring)."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None or loaded_allocator() == "jemalloc":
        return {"arenas": False, "mmap_threshold": False}
    return {
        "arenas": arenas > 0 and "MALLOC_ARENA_MAX" not in os.environ and bool(mallopt(M_ARENA_MAX, arenas)),
        "mmap_threshold": mmap_threshold_kb > 0
        and "MALLOC_MMAP_THRESHOLD_" not in os.environ
        and bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold_kb * 1024)),
    }


def trim_native_heap() -> None:
    """Return freed heap pages to the OS: jemalloc purges its arenas, glibc runs
    malloc_trim(0); a no-op elsewhere."""
    if loaded_allocator() == "jemalloc":
        mallctl = getattr(ctypes.CDLL(None), "mallctl", None)
        if mallctl is not None:
            # "arena.<MALLCTL_ARENAS_ALL>.purge"; 4096 is jemalloc 5's MALLCTL_ARENAS_ALL
            mallctl(b"arena.4096.purge", None, None, None, ctypes.c_size_t(0))
        return
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim(0)


def _libc() -> ctypes.CDLL | None:
    """The C library, for glibc's allocator controls (None where it cannot be loaded)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None
