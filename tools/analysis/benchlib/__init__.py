"""Helpers of the benchmark tools in ``tools/analysis/`` (not part of the ``mmsoft`` package: nothing at run time
needs them).

How the tools import them: a tool is run as a script (``python tools/analysis/benchmark_backbone.py``), and Python
puts the script's folder first on ``sys.path``, so ``tools/analysis/`` modules import this package and each other as
top-level modules (``from benchlib.case_subprocess import run_case_subprocess``, ``import benchmark_attention``).
pytest gets the same folder on its path from ``pythonpath`` in ``pyproject.toml``, so tests import them the same way.

* :mod:`benchlib.case_subprocess`: run one benchmark case in a fresh interpreter, its result as JSON.
* :mod:`benchlib.process_memory`: peak resident memory of the current process (Linux ``/proc``).
* :mod:`benchlib.profiler_ranges`: time spent inside named ``torch.profiler.record_function`` ranges.
"""
