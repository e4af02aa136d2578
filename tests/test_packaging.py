"""``pip install .`` (not editable) into a fresh virtual environment that already has the OpenMMLab stack: the wheel
carries the compiled extension and the requirements, and the installed copy imports from anywhere."""
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, timeout: float = 900) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_with_the_stack(tmp_path):
    # Built in the checkout (in-tree build: ninja reuses build/mmsoft-ext), as `pip install .` does.
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", "-w", str(tmp_path), "."],
        cwd=ROOT)
    (wheel,) = tmp_path.glob("mmsoft-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert any(n.startswith("mmsoft/_ext") and n.endswith(".so") for n in names), "no compiled extension"
    assert "Requires-Dist: mmcv<2.2.0,>=2.0.0" in metadata and "Requires-Dist: mmengine" in metadata

    venv = tmp_path / "venv"
    run([sys.base_prefix + "/bin/python3", "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip()
    Path(site, "openmmlab_stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # the stack, no mmsoft
    # venv seeds an old setuptools (Python < 3.12) that would shadow the stack's (torch needs >= 77)
    run([str(python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], cwd=tmp_path)
    run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-build-isolation", str(wheel)], cwd=tmp_path)
    out = run([str(python), "-c", "import mmsoft, mmsoft.ops; from mmsoft.models import SOFT; "
               "print(mmsoft.__file__); print(mmsoft.ops.ext_available('cpu'))"], cwd=tmp_path)
    installed_at, ext = out.split()
    assert installed_at.startswith(site) and ext == "True"


@pytest.mark.parametrize("first", ["mmsoft.models.backbones.soft_converter", "mmsoft.models.backbones.soft",
                                   "mmsoft.utils.channel_check", "mmsoft.utils.checkpoint_fit", "mmsoft.checkpoint",
                                   "mmsoft.utils.complexity"])
def test_layers_import_first_in_a_fresh_interpreter(first):
    # Layers: mmsoft.checkpoint and mmsoft.ops below the models, mmsoft.utils (the tools' set-up) above them. Any
    # module imports first without an import loop, and the models never pull in mmsoft.utils.
    code = (f"import sys, {first}\n"
            "import mmsoft.models\n"
            "print(sorted(m for m in sys.modules if m == 'mmsoft.utils' or m.startswith('mmsoft.utils.')))")
    out = run([sys.executable, "-c", code], cwd=ROOT).strip()
    if not first.startswith("mmsoft.utils"):
        # mmsoft.utils.cpu_amp / dist_env are the registry's lazy locations: only imported when a runner builds
        assert out == "[]", f"importing {first} and mmsoft.models imported {out}"
