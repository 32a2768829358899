"""benchmarks/bench_integer_neurons.py: the integer neuron with and without spikezoo's C kernel
and the authors' ``MultiSpike``. Nothing asserts on how long anything took."""

from __future__ import annotations

import re
import types

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.usefixtures("benchmarks_path")


class _Quant(torch.autograd.Function):
    """The authors' ``Quant`` as ``Model_Base/models.py`` writes it."""

    @staticmethod
    def forward(ctx, i, min_value, max_value):
        ctx.min, ctx.max = min_value, max_value
        ctx.save_for_backward(i)
        return torch.round(torch.clamp(i, min=min_value, max=max_value))

    @staticmethod
    def backward(ctx, grad_output):
        grad_input = grad_output.clone()
        (i,) = ctx.saved_tensors
        grad_input[i < ctx.min] = 0
        grad_input[i > ctx.max] = 0
        return grad_input, None, None


class _MultiSpike(nn.Module):
    """The authors' ``MultiSpike`` (``Norm`` = ``max_value``), or with ``floor`` in place of
    their rounding: an implementation that computes otherwise."""

    def __init__(self, min_value=0, max_value=4, floor=False):
        super().__init__()
        self.min_value, self.max_value, self.floor = min_value, max_value, floor

    def forward(self, x):
        if self.floor:
            return torch.floor(torch.clamp(x, self.min_value, self.max_value)) / self.max_value
        return _Quant.apply(x, self.min_value, self.max_value) / self.max_value


def _run(tmp_path, *extra):
    import bench_integer_neurons
    from harness.markdown import markers

    begin, end = markers("bench_integer_neurons")
    page = tmp_path / "page.md"
    page.write_text(f"before\n{begin}\nold\n{end}\nafter\n")
    argv = ["--shapes", "1x1x6x5x5,40000", "--repeats", "1", "--threads", "1"]
    report = bench_integer_neurons.main([*argv, "--markdown", str(page), *extra])
    return report, page.read_text()


def test_without_the_authors_code_the_others_run_and_the_page_says_why(tmp_path, monkeypatch):
    from peers import authors

    monkeypatch.setattr(authors, "PEERS_DIR", tmp_path / "no-peers")
    report, text = _run(tmp_path)
    assert set(report["results"]) == {f"{s}:{t}" for s in ("1x1x6x5x5", "40000")
                                      for t in ("infer", "train")}  # fmt: skip
    for record in report["results"].values():
        assert set(record["timings"]) == {"spikezoo", "spikezoo-pytorch"}
        assert record["agrees"] == {"spikezoo": True, "spikezoo-pytorch": True}
        assert record["speedup"]["spikezoo-pytorch"] > 0
        assert "setup_peers.sh" in record["not_run"]["authors"]
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    rows = [line.split("|")[1:3] for line in text.splitlines() if line.startswith("| 40000")]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["40000", "infer"],
        ["40000", "train"],
    ]
    assert "Not run: authors: RuntimeError: run benchmarks/setup_peers.sh first" in text


def test_the_authors_neuron_is_timed_and_compared(tmp_path, monkeypatch):
    import bench_integer_neurons

    module = types.SimpleNamespace(MultiSpike=_MultiSpike)
    monkeypatch.setattr(bench_integer_neurons, "authors_module", lambda source: module)
    report, text = _run(tmp_path, "--tasks", "train")
    for record in report["results"].values():
        assert record["agrees"]["authors"] is True and record["speedup"]["authors"] > 0
    assert "Not run" not in text and len(re.findall(r"\|\s*yes\s*\|\n", text)) == 2


def test_an_implementation_that_computes_otherwise_is_named(tmp_path, monkeypatch):
    import bench_integer_neurons

    module = types.SimpleNamespace(MultiSpike=lambda **kw: _MultiSpike(**kw, floor=True))
    monkeypatch.setattr(bench_integer_neurons, "authors_module", lambda source: module)
    report, text = _run(tmp_path, "--tasks", "infer")
    assert all(record["agrees"]["authors"] is False for record in report["results"].values())
    assert "no: ['authors']" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shapes", "1x0x4"], "--shapes: expected sizes like 1x1x96x8x8"),
        (["--shapes", "big"], "--shapes: expected sizes like 1x1x96x8x8"),
        (["--tasks", "fit"], "--tasks: expected a comma-separated subset"),
        (["--repeats", "0"], "--repeats: expected at least 1, got 0"),
    ],
)
def test_wrong_arguments_are_named(capsys, argv, message):
    import bench_integer_neurons

    with pytest.raises(SystemExit):
        bench_integer_neurons.parse_args(argv)
    assert message in capsys.readouterr().err
