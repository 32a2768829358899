"""What every benchmark under ``benchmarks/`` shares.

- :mod:`harness.timing`: interleaved rounds through ``torch.utils.benchmark``, medians, ratios;
- :mod:`harness.memory`: the peak memory of one call in this process;
- :mod:`harness.process`: a function run in a fresh process, its result and peak memory back;
- :mod:`harness.environment`: date, machine, versions and the load before and after a run;
- :mod:`harness.markdown`: tables (``spikezoo.analysis.Table``) and the generated parts of docs.
"""
