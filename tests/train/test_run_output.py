"""What a run says without a progress bar, and the backend ``validate`` picks for its work."""

import torch

from spikezoo.neurons import MultiStepNeuron
from spikezoo.neurons.backends import native
from spikezoo.train import engine, train, validate

from .conftest import tiny_recipe


def test_a_run_without_progress_bar_prints_one_line_per_epoch_and_validate_compiles_nothing(
    tmp_path, capsys, monkeypatch
):
    config = tiny_recipe(tmp_path, "run.epochs=2", "data.subset=64")  # run.progress=false
    train(config)
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "train_loss" in lines[0] and "eval_top1" in lines[1]
    assert "it/s" not in captured.err  # no progress bar

    # The evaluation set is a few batches: the neurons run the C loops ("auto" on a CPU), or
    # eagerly where "auto" would compile them with inductor.
    backends = []
    evaluate = engine.evaluate

    def recording_evaluate(model, loader, context, amp=False):
        neurons = [m for m in model.modules() if isinstance(m, MultiStepNeuron)]
        backends.append({neuron.backend for neuron in neurons})
        return evaluate(model, loader, context, amp)

    monkeypatch.delenv("SPIKEZOO_BACKEND", raising=False)
    monkeypatch.setattr(engine, "evaluate", recording_evaluate)
    validate(
        tiny_recipe(tmp_path, "data.subset=64", "model.neuron_backend=auto"), tmp_path / "last.pth"
    )
    expected = "auto" if native.unavailable_reason(torch.ones(1)) is None else "torch"
    assert backends == [{expected}]
