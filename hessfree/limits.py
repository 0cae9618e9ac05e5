"""Limits checked before allocating: sizes implied by files, labels and options against the
machine's memory.

A size read from untrusted input (an ``.npz`` header, a label, a manifest, an option such
as ``--hidden``) is turned into bytes with Python integers (which never overflow) and
compared here with the physical memory of this machine *before* anything is allocated, so
the caller can refuse it with a message naming the file, key or option it came from,
instead of a ``MemoryError`` naming nothing (or the kernel killing the process later).

The comparisons are lower bounds of what the work needs: a size refused here cannot fit,
whatever else the process holds. Set ``HESSFREE_MEMORY_BYTES`` to pretend the machine has
that much memory (tests; a container whose limit is below the host's memory).
"""

from __future__ import annotations

import os

#: environment variable overriding the physical memory (bytes)
MEMORY_ENV = "HESSFREE_MEMORY_BYTES"


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (``SC_PHYS_PAGES · SC_PAGE_SIZE``), or the
    ``HESSFREE_MEMORY_BYTES`` override; None where the platform does not say."""
    override = os.environ.get(MEMORY_ENV)
    if override:
        try:
            value = int(float(override))
        except ValueError:
            value = 0
        if value > 0:
            return value
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - platforms without sysconf
        return None
    if pages <= 0 or page <= 0:  # pragma: no cover
        return None
    return int(pages) * int(page)


def exceeds_memory(nbytes: int) -> bool:
    """Whether ``nbytes`` is more than this machine's physical memory (False if unknown)."""
    memory = physical_memory()
    return memory is not None and int(nbytes) > memory


def size_text(nbytes: int | float) -> str:
    """``512 B``, ``1.5 MiB``, ``88.0 TiB``, ``4.2e+09 EiB``."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 1e6 else f"{value:.2g} {unit}"
        value /= 1024
    return f"{value:.2g} PiB"  # pragma: no cover


def memory_text() -> str:
    """``this machine has 23.5 GiB`` (or ``this machine's memory is unknown``)."""
    memory = physical_memory()
    return "this machine's memory is unknown" if memory is None else f"this machine has {size_text(memory)} of memory"
