"""``spikezoo.native.library``: a C source compiled once per source, compiler and CPU into the
cache, loaded with ctypes; ``None`` (and nothing left behind) where it cannot be built."""

from __future__ import annotations

import ctypes
import logging
import shutil

import pytest

from spikezoo import native


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty cache and no library loaded yet in this process."""
    monkeypatch.setenv("SPIKEZOO_CACHE", str(tmp_path / "cache"))
    native.library.cache_clear()
    yield tmp_path / "cache" / "native"
    native.library.cache_clear()


def test_builds_once_into_the_cache_and_loads(fresh, caplog):
    with caplog.at_level(logging.INFO, logger="spikezoo.native"):
        lib = native.library("batch_norm")
    assert [r.getMessage() for r in caplog.records] == [native.BUILD_NOTE % ("batch_norm.c", fresh)]
    caplog.clear()
    assert isinstance(lib, ctypes.CDLL)
    assert hasattr(lib, "batch_norm_training_f32")
    built = list(fresh.iterdir())
    assert [p.suffix for p in built] == [".so"] and built[0].name.startswith("batch_norm-")
    assert native.library("batch_norm") is lib  # one load per process
    native.library.cache_clear()
    stamp = built[0].stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="spikezoo.native"):
        assert native.library("batch_norm") is not None
    assert list(fresh.iterdir()) == built and built[0].stat().st_mtime_ns == stamp  # reused
    assert caplog.records == []  # a build that is loaded is not announced


def test_without_a_compiler_there_is_no_library(fresh, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-anywhere")
    assert native.library("batch_norm") is None
    assert not fresh.exists()


def test_a_failed_build_warns_and_leaves_nothing(fresh, tmp_path, monkeypatch, caplog):
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "broken.c").write_text("int broken(void) { return undeclared; }\n")
    monkeypatch.setattr(native, "SOURCES", sources)
    with caplog.at_level(logging.WARNING, logger="spikezoo.native"):
        assert native.library("broken") is None
    assert "could not compile broken.c" in caplog.text and "undeclared" in caplog.text
    assert list(fresh.iterdir()) == []  # the temporary output is gone


def test_another_source_builds_another_library(fresh, tmp_path, monkeypatch):
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "answer.c").write_text("int answer(void) { return 42; }\n")
    monkeypatch.setattr(native, "SOURCES", sources)
    assert native.library("answer").answer() == 42
    (sources / "answer.c").write_text("int answer(void) { return 43; }\n")
    native.library.cache_clear()
    assert native.library("answer").answer() == 43  # a changed source is a new build
    assert len(list(fresh.iterdir())) == 2


def test_a_changed_header_is_a_new_build(fresh, tmp_path, monkeypatch):
    """A header beside the sources enters every library's key: a library built against an old
    header is not loaded for a new one."""
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "value.h").write_text("#define VALUE 1\n")
    (sources / "value.c").write_text('#include "value.h"\nint value(void) { return VALUE; }\n')
    monkeypatch.setattr(native, "SOURCES", sources)
    assert native.library("value").value() == 1
    (sources / "value.h").write_text("#define VALUE 2\n")
    native.library.cache_clear()
    assert native.library("value").value() == 2
    assert len(list(fresh.iterdir())) == 2


def test_a_compiler_without_openmp_builds_the_serial_code(fresh, tmp_path, monkeypatch, caplog):
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "threads.c").write_text(
        "int threads(void) {\n#ifdef _OPENMP\n return 2;\n#else\n return 1;\n#endif\n}\n"
    )
    monkeypatch.setattr(native, "SOURCES", sources)
    assert native.library("threads").threads() == 2  # OpenMP first
    compiler = tmp_path / "no-openmp-cc"
    compiler.write_text(
        f'#!/bin/sh\nfor a; do [ "$a" = -fopenmp ] && echo "no OpenMP" >&2 && exit 1; done\n'
        f'exec {shutil.which("gcc") or shutil.which("cc")} "$@"\n'
    )
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    native.library.cache_clear()
    with caplog.at_level(logging.INFO, logger="spikezoo.native"):
        assert native.library("threads").threads() == 1
    assert "no OpenMP" in caplog.text
    # announced once, though two builds (with OpenMP, then without) ran
    assert [r.msg for r in caplog.records].count(native.BUILD_NOTE) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    native.library.cache_clear()  # as in a later process: the failed OpenMP build is not retried
    with caplog.at_level(logging.INFO, logger="spikezoo.native"):
        assert native.library("threads").threads() == 1
    assert "no OpenMP" not in caplog.text
    assert len(list(fresh.glob("threads-*.no-openmp"))) == 1


def test_a_profiler_names_the_time_in_each_kernel():
    """Every C kernel the layers and neurons call shows in a ``torch.profiler`` trace as
    ``spikezoo::<function>``, forward and backward; without a profiler the calls run alike."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from spikezoo.layers import batch_norm, max_pool2d
    from spikezoo.neurons import IntegerNeuron, MultiStepLIF

    bn, lif = torch.nn.BatchNorm2d(16).train(), MultiStepLIF(backend="native")
    x = torch.randn(4, 16, 64, 64, requires_grad=True)
    weights = torch.randn(4, 16, 32, 32), torch.randn(1, 4, 16, 64, 64)

    def step():
        spikes = lif(batch_norm(bn, x).unflatten(0, (2, 2)))
        pooled = max_pool2d(spikes.flatten(0, 1), 3, 2, 1)
        integers = IntegerNeuron(4)(x.unsqueeze(0))
        # contiguous gradients (a sum's is a broadcast view, which PyTorch's kernels take)
        loss = (pooled * weights[0]).sum() + (integers * weights[1]).sum()
        loss.backward()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        step()
    names = {event.name for event in trace.events()}
    expected = {
        "spikezoo::batch_norm_training_f32",
        "spikezoo::neurons_forward_f32",
        "spikezoo::neurons_backward_f32",
        "spikezoo::max_pool2d_offsets_f32",
        "spikezoo::max_pool2d_offsets_backward_f32",
        "spikezoo::integer_fire_f32",
        "spikezoo::integer_backward_f32",
    }
    assert expected <= names, sorted(expected - names)
    step()  # no profiler: the same calls
