# On GPU images whose torch predates 2.14 (the only version spikezoo is tested with),
# torch.compile lacks the isolate_recompiles and recompile_limit keywords that the "inductor"
# backend passes. benchmarks/run_gpu.sh puts this folder on PYTHONPATH: the keywords this
# torch.compile does not take are dropped. Without isolate_recompiles every compile region of a
# loop shares one cache, so dynamo's recompile limits are raised to hold them all (at 8, a test
# of two models' neurons hit the limit under fullgraph=True). Nothing else changes.
import inspect
import sys

import torch

_compile = torch.compile
_known = set(inspect.signature(_compile).parameters)


def _compat_compile(*args, **kwargs):
    return _compile(*args, **{key: value for key, value in kwargs.items() if key in _known})


if "isolate_recompiles" not in _known:
    torch.compile = _compat_compile
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = dynamo_config.accumulated_recompile_limit = 1024
    print(f"torch {torch.__version__}: dropping torch.compile keywords it lacks", file=sys.stderr)
