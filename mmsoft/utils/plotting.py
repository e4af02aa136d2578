"""Optional matplotlib for the benchmark tools: plots are a by-product, so a missing matplotlib must not stop a run."""
from __future__ import annotations

from types import ModuleType


def load_pyplot() -> ModuleType | None:
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or None (with a one-line hint) when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    return plt
