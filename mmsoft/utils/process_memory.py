"""Peak resident memory of the current process on Linux, for the benchmark tools' per-case subprocesses."""
from __future__ import annotations

import re


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
