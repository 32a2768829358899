"""Host kernels written in C: compiled for this machine at first use and loaded with ctypes.

A kernel here exists because PyTorch's own CPU kernel for the same computation is slow in a
way its code, not the hardware, decides (BatchNorm: an order of additions that one thread
follows, one channel at a time; max-pooling: one scalar window at a time, writing ``int64``
indices; the neurons: one small kernel per operation and time step, or a compile per
configuration), and it computes that result bit for bit, faster (the neurons' gradients up to
their surrogate's exponential, see :mod:`spikezoo.neurons.backends.native`). Its caller checks
it against PyTorch's computation once per process and falls back to PyTorch wherever it
cannot be built, loaded or trusted, so the library never computes otherwise, only slower.

The shared library is built by the C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) for
the CPU it runs on (``-O3 -march=native``, no floating-point contraction), with OpenMP where
the compiler has it (else the same source builds without, and its loops run on one thread),
into
``<spikezoo cache>/native/`` (``$SPIKEZOO_CACHE``), under a name that hashes the source (and
the headers beside it), the compiler, the flags and the CPU; it is written to a temporary
file and renamed into place, so a failed or concurrent build leaves no half-written library
behind. The first build takes about three seconds per source on 2 cores; it is logged
(``INFO``, :data:`BUILD_NOTE`) before it starts, and the command line shows that on stderr.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from spikezoo._profiling import ProfiledCall

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "BUILD_NOTE",
    "MIN_PARALLEL_VALUES",
    "SOURCES",
    "Kernel",
    "kernel",
    "library",
    "pointer",
    "threads",
]

_log = logging.getLogger(__name__)

#: The directory that holds the C sources (``<name>.c``) and the headers they share (``*.h``),
#: shipped with the package.
SOURCES = Path(__file__).parent

_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC")
#: Tried first. The library then needs ``libgomp.so.1``, which resolves to the copy PyTorch has
#: loaded where PyTorch uses GNU OpenMP (its Linux wheels do): one pool of threads for both.
_OPENMP = ("-fopenmp",)


#: What is logged (``INFO``) before a library is compiled: the first use on a machine waits
#: seconds for it (about 3 s per library on 2 cores), which the command line says on stderr.
BUILD_NOTE = "spikezoo: compiling %s for this CPU, once (a few seconds); later runs load it from %s"


def _compiler() -> str | None:
    names = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    return next((path for name in names if (path := shutil.which(name))), None)


def _cpu() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags where Linux lists them."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() + platform.processor()
    flags = next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), "")
    return platform.machine() + flags


def _build(compiler: str, flags: tuple[str, ...], source: Path, target: Path) -> str | None:
    """Compiles ``source`` into ``target``; ``None``, or why it failed (nothing is left)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        result = subprocess.run(
            [compiler, *flags, str(source), "-o", temporary, "-lm"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            return f"{compiler} could not compile {source.name}:\n{result.stderr.strip()}"
        os.replace(temporary, target)
        return None
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"building {source} failed ({error})"
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@functools.cache
def library(name: str) -> ctypes.CDLL | None:
    """The compiled ``<name>.c`` of :data:`SOURCES`, built on the first call of the process
    where no build for this source, compiler and CPU is cached, with OpenMP if the compiler
    builds it so, else without (an OpenMP build that failed where the plain one built is
    remembered in the cache, as ``<name>-<key>.no-openmp``, and not tried again); ``None``
    where no C compiler is found or the build or the loading fails (a warning says why, except
    for a missing compiler)."""
    source = SOURCES / f"{name}.c"
    compiler = _compiler()
    if compiler is None:
        _log.info("spikezoo: no C compiler found; PyTorch's kernel runs instead of %s", name)
        return None
    from spikezoo.weights.cache import cache_root

    # the headers a source may include are part of what it compiles to
    texts = [path.read_text() for path in [source, *sorted(SOURCES.glob("*.h"))]]
    openmp_refused = None
    for flags in (_FLAGS + _OPENMP, _FLAGS):
        key = hashlib.sha256("\0".join([*texts, compiler, *flags, _cpu()]).encode()).hexdigest()
        key = key[:16]
        target = cache_root() / "native" / f"{name}-{key}.so"
        refused = target.with_suffix(".no-openmp")
        # an OpenMP build that failed where the plain one builds is not tried again
        if flags != _FLAGS and refused.exists():
            continue
        if target.exists():
            break
        if openmp_refused is None:  # no build tried yet in this call: say that one starts
            _log.info(BUILD_NOTE, source.name, target.parent)
        if (failure := _build(compiler, flags, source, target)) is None:
            break
        _log.info("spikezoo: %s", failure)
        if flags != _FLAGS:
            openmp_refused = refused, failure
    else:
        _log.warning("spikezoo: %s\nPyTorch's kernel runs instead", failure)
        return None
    if openmp_refused is not None:
        openmp_refused[0].write_text(openmp_refused[1])
    try:
        return ctypes.CDLL(str(target))
    except OSError as error:
        _log.warning("spikezoo: could not load %s (%s); PyTorch's kernel runs", target, error)
        return None


class Kernel(ProfiledCall):
    """A C function of a library here, called as ``kernel(*args)``: under ``torch.profiler``
    each call is a range named ``spikezoo::<function>`` (a ctypes call is no operator of
    PyTorch's, and its time would otherwise count as its Python caller's)."""

    def __init__(self, function: ctypes._CFuncPtr) -> None:
        super().__init__(f"spikezoo::{function.__name__}", function)


def kernel(library: ctypes.CDLL, name: str, argtypes: list, restype: type | None = None) -> Kernel:
    """The function ``name`` of ``library`` with its argument and result types, as a
    :class:`Kernel`."""
    function = getattr(library, name)
    function.argtypes, function.restype = argtypes, restype
    return Kernel(function)


def pointer(t: Tensor | None) -> int | None:
    """The address of ``t``'s first element for a ctypes argument (``None``: a null pointer)."""
    return None if t is None else t.data_ptr()


#: An elementwise kernel call over fewer values than this runs on one thread: a parallel
#: region costs more than it saves.
MIN_PARALLEL_VALUES = 1 << 15


def threads(values: int) -> int:
    """The threads an elementwise kernel call over ``values`` values takes: as many as PyTorch
    uses, or one below :data:`MIN_PARALLEL_VALUES`."""
    import torch  # the build and load above need no torch

    return torch.get_num_threads() if values >= MIN_PARALLEL_VALUES else 1
