"""Process-wide allocator settings that make CPU work faster: the application's choice.

glibc's ``malloc`` serves a block above its mmap threshold with a mapping of its own and unmaps
it when the block is freed (the threshold starts at 128 KiB and rises, as such blocks are
freed, up to 32 MiB), and it gives free memory at the top of its heap back to the kernel past
its trim threshold. A forward pass or a training step allocates its activations afresh on every
call, so on a CPU the pages of every large activation are mapped, faulted in and zeroed by the
kernel again on every call. On a 2-core VM, four models' inference calls ran 1.14-1.45x and
their training steps 1.04-1.11x as fast with the freed memory kept
(``benchmarks/bench_freed_memory.py``, fresh processes in pairs).

:func:`keep_freed_memory` raises both thresholds as far as glibc takes them, so that freed
blocks stay in the process and the next call reuses them without a fault. The price: the
process's resident memory stays at its peak between calls instead of falling back. Since that
is a setting of the whole process, spikezoo's library never makes it on its own. The
``spikezoo`` command, whose process is the application, does (:data:`KEEP_FREED_MEMORY_ENV`
``=0`` leaves glibc's defaults); a script or training loop calls :func:`keep_freed_memory`
once, at its start. The environment variables ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` do the same from outside a process.
"""

from __future__ import annotations

import ctypes
import logging

__all__ = ["KEEP_FREED_MEMORY_ENV", "freed_memory_kept", "keep_freed_memory"]

_log = logging.getLogger(__name__)

#: The environment variable with which ``SPIKEZOO_KEEP_FREED_MEMORY=0`` keeps the ``spikezoo``
#: command from calling :func:`keep_freed_memory` (``1``, empty or unset: it calls it).
KEEP_FREED_MEMORY_ENV = "SPIKEZOO_KEEP_FREED_MEMORY"

# mallopt's parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: The values tried, largest first: mallopt takes an int, and some glibc versions refuse an
#: mmap threshold above half their largest heap (64 MiB), the 32 MiB its dynamic threshold
#: stops at.
_THRESHOLDS = {_M_MMAP_THRESHOLD: (2**31 - 1, 32 << 20), _M_TRIM_THRESHOLD: (2**31 - 1,)}

_kept = False


def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (the one with ``mallopt``'s thresholds), else
    ``None`` (musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in this process instead of returning it to the kernel.

    Returns ``True`` where glibc took the settings; ``False`` where the process's C library is
    not glibc (nothing changes) or glibc refused a setting (logged at debug level). It cannot
    be undone in the same process.
    """
    global _kept
    libc = _glibc()
    if libc is None:
        _log.debug("spikezoo: the C library is not glibc; its allocator is left as it is")
        return False
    for parameter, values in _THRESHOLDS.items():
        if not any(libc.mallopt(parameter, value) == 1 for value in values):
            _log.debug("spikezoo: glibc refused mallopt(%d, %s)", parameter, values)
            return False
    _kept = True
    return True


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` has taken effect in this process."""
    return _kept
