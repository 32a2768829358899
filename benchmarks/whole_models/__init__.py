"""The parts of ``benchmarks/bench_models.py``, one concern each.

- :mod:`whole_models.zoo`: the benchmarked models and the implementations that run them;
- :mod:`whole_models.agreement`: the check that every implementation computes spikezoo's logits;
- :mod:`whole_models.calls`: the measured calls, one inference batch or one training step;
- :mod:`whole_models.measure`: the driver: build, check, time, measure memory, profile;
- :mod:`whole_models.roofline`: the machine's limits and where spikezoo's time goes;
- :mod:`whole_models.report`: Markdown tables and PNG plots of a report.
"""
