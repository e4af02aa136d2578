"""The OpenMMLab versions mmsoft works with, checked when mmsoft is imported.

The ranges are declared once, in ``requirements/mminstall.txt`` (``setup.py`` makes them the package's requirements);
here they are read back from the installed package's metadata. A version outside its range stops the import with
the exact ``pip install`` to run, instead of a confusing failure deep inside mmdet or mmcv later (mmdet does the same
for mmcv / mmengine in its ``__init__``). mmdet and mmsegmentation are checked when installed: the backbone itself
needs only mmengine and mmcv.
"""
from __future__ import annotations

import importlib.metadata as metadata

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

#: Packages whose installed version is checked; the first two must be installed.
CHECKED = ("mmcv", "mmengine", "mmdet", "mmsegmentation")
REQUIRED = ("mmcv", "mmengine")
INSTALL_HINT = ("mmcv must be built with its ops for this torch: `bash tools/install.sh` in an mmsoft checkout does "
                "it (or see mmcv's install guide)")


def declared_requirements() -> dict[str, Requirement]:
    """The requirements of the installed mmsoft distribution among :data:`CHECKED` (empty when mmsoft runs from a
    checkout that was never installed)."""
    try:
        lines = metadata.requires("mmsoft") or []
    except metadata.PackageNotFoundError:
        return {}
    out = {}
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.name in CHECKED and req.marker is None:
            out[req.name] = req
    return out


def check_dependencies(installed_version=metadata.version) -> None:
    """Raise ``ImportError`` naming the ``pip install`` to run when an installed OpenMMLab package is outside the range
    mmsoft declares (or a required one is missing). ``installed_version(name)`` returns a version string."""
    problems = []
    for name, req in declared_requirements().items():
        try:
            found = installed_version(name)
        except metadata.PackageNotFoundError:
            if name in REQUIRED:
                problems.append(f"{name} is not installed; pip install '{req}'")
            continue
        try:
            ok = req.specifier.contains(Version(found), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            problems.append(f"{name} {found} is installed, mmsoft needs {req}: pip install '{req}'")
    if problems:
        hint = f" ({INSTALL_HINT})" if any(p.startswith("mmcv") for p in problems) else ""
        raise ImportError("mmsoft cannot run with this OpenMMLab stack: " + "; ".join(problems) + hint)
