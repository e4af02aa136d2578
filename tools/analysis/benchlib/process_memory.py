"""Peak memory of the current process (Linux resident set size, or the CUDA caching allocator), for the benchmark
tools' per-case workers."""
from __future__ import annotations

import gc
import re
from typing import Any


def status_kib(key: str) -> int:
    """A ``/proc/self/status`` field in KiB (e.g. ``VmHWM`` peak RSS, ``VmRSS``), 0 when unavailable."""
    with open("/proc/self/status") as f:
        match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
    return int(match.group(1)) if match else 0


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0) so a later peak counts only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory growth over a ``with`` block, in ``peak_bytes`` after it, and how it was measured in ``method``.

    CUDA: ``torch.cuda.max_memory_allocated`` minus the bytes allocated at the start (the caching allocator's view).
    CPU: the peak resident set size (``VmHWM``, reset at the start) minus the resident size at the start; this counts
    every allocation (torch's allocator, BLAS scratch), not only tensors. Where the peak cannot be reset it includes
    earlier peaks of the process, and ``method`` says so. Entering collects garbage first (see ``__enter__``).
    """

    def __init__(self, cuda: bool, device: Any = None) -> None:
        self.cuda = cuda
        self.device = device
        self.peak_bytes = 0
        self.method = "torch.cuda.max_memory_allocated" if cuda else "VmHWM after clear_refs"
        self._base = 0

    def __enter__(self) -> PeakMemory:
        # Free the garbage of earlier work now: a collection inside the block would lower the resident size under
        # the base read here and hide (part of) the block's own peak.
        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            if not reset_peak_rss():
                self.method = "VmHWM (could not be reset: includes earlier peaks of the process)"
            self._base = status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = status_kib("VmHWM") * 1024
        self.peak_bytes = max(int(peak - self._base), 0)
