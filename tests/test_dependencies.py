"""The import-time check of the OpenMMLab versions (``mmsoft/dependencies.py``) against ``requirements/``."""
import importlib.metadata as metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from mmsoft.dependencies import CHECKED, check_dependencies, declared_requirements

ROOT = Path(__file__).resolve().parents[1]


def test_declared_ranges_are_the_requirement_files():
    declared = {name: req.specifier for name, req in declared_requirements().items()}
    files = [Requirement(line) for line in (ROOT / "requirements" / "mminstall.txt").read_text().split()]
    assert declared == {req.name: req.specifier for req in files}
    assert set(declared) == set(CHECKED)


def test_installed_stack_passes():
    check_dependencies()


@pytest.mark.parametrize("name,bad", [("mmcv", "2.2.0"), ("mmengine", "0.9.1"), ("mmdet", "2.28.2"),
                                      ("mmsegmentation", "1.3.0")])
def test_an_incompatible_version_names_the_pip_command(name, bad):
    def fake_version(pkg: str) -> str:
        return bad if pkg == name else metadata.version(pkg)

    req = str(declared_requirements()[name])
    with pytest.raises(ImportError, match=f"{name} {bad} is installed, mmsoft needs {req}: pip install '{req}'"):
        check_dependencies(fake_version)


def test_missing_mmcv_is_named_but_missing_mmdet_is_fine():
    def without(*missing: str):
        def fake_version(pkg: str) -> str:
            if pkg in missing:
                raise metadata.PackageNotFoundError(pkg)
            return metadata.version(pkg)
        return fake_version

    check_dependencies(without("mmdet", "mmsegmentation"))
    with pytest.raises(ImportError, match="mmcv is not installed.*tools/install.sh"):
        check_dependencies(without("mmcv"))
