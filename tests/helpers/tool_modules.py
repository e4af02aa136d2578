"""Import a command-line tool (``tools/**/*.py``, not a package) as a module, to call its functions in-process."""
from __future__ import annotations

import importlib.util
from types import ModuleType

from helpers.run_configs import ROOT


def load_tool(relative_path: str) -> ModuleType:
    """The tool at ``ROOT / relative_path`` (e.g. ``'tools/analysis/get_flops.py'``), freshly executed."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
