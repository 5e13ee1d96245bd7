"""The wheel: edge_irst.models / edge_irst.export inside the namespace, nothing top-level, no torch on import."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(out), str(REPO)], check=True)
    (path,) = out.glob("edge_irst-*.whl")
    return path


def test_wheel_has_no_top_level_models_or_export(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert not {"models", "export"} & top, sorted(top)
    assert "edge_irst/models/lw_irstnet.py" in names
    assert "edge_irst/export/__init__.py" in names


def test_sdist_carries_the_tests_and_the_benchmarks_and_no_build_output(tmp_path):
    # Built from a copy of the checkout's files: in the checkout itself setuptools would also add every file
    # listed in an earlier build's edge_irst.egg-info/SOURCES.txt, whatever MANIFEST.in says now.
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"needs a git checkout to copy the sources from ({listed.stderr.strip()})")
    tree = tmp_path / "tree"
    for name in listed.stdout.splitlines():
        if (REPO / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    build = f"from setuptools import build_meta; build_meta.build_sdist({str(tmp_path)!r})"
    subprocess.run([sys.executable, "-c", build], cwd=tree, check=True, capture_output=True)
    (path,) = tmp_path.glob("edge_irst-*.tar.gz")
    with tarfile.open(path) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in ("Makefile", "LICENSE", "setup.py", "edge_irst/postprocess/labeller_core.c", "models/lw_irstnet.py",
                   "tests/test_benchmark_scripts.py", "tests/c/labeller_asan.c", "benchmarks/postprocess.py",
                   "benchmarks/c/labeller_ab.c", "benchmarks/results/postprocess.json"):
        assert needed in names, needed
    assert not [name for name in names if name.endswith((".so", ".pyc")) or "__pycache__" in name]


def test_installed_wheel_imports_both_names_without_torch_on_import(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Install the wheel's files into the fresh venv (no network, no deps) ...
    zipfile.ZipFile(wheel).extractall(site)
    # ... and let it see the dependencies (numpy, cv2, torch) of this test's environment, AFTER its own site dir,
    # so edge_irst itself can only come from the fresh install.
    (Path(site) / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = (
        "import sys, edge_irst\n"
        "assert 'torch' not in sys.modules, 'import edge_irst pulled in torch'\n"
        f"assert edge_irst.__file__.startswith({site!r}), edge_irst.__file__\n"
        "import edge_irst.export, edge_irst.models\n"
        "assert edge_irst.models.create_model('lw_irstnet') is not None\n"
        "from edge_irst import Detector\n"
        "from edge_irst.assets import default_model\n"
        "from edge_irst.synthetic import SyntheticScene, match_truth\n"
        f"assert str(default_model()).startswith({site!r}), default_model()\n"
        "scene = SyntheticScene(targets=3, seed=5)\n"
        "for backend in ('onnxruntime', 'ncnn', 'mnn', 'tflite'):\n"
        "    det = Detector(backend=backend, threads=1)\n"
        "    found = missed = 0\n"
        "    for i in range(4):\n"
        "        f = scene.frame(i)\n"
        "        d = det.detect(f.image)\n"
        "        m = match_truth(d.x, d.y, f.centers)\n"
        "        found, missed = found + m.found, missed + m.missed\n"
        "    assert missed == 0 and found == 12, (backend, found, missed)\n"
        "import importlib.util as u\n"
        "assert u.find_spec('models') is None and u.find_spec('export') is None, 'top-level module leaked'\n"
        "print('ok')\n"
    )
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    # The `edge-irst` console script as pip writes it: a fresh interpreter that imports only the entry point (an
    # editable install's .pth and `python -m` both import importlib.util first, and so hid a missing import).
    script = tmp_path / "edge-irst"
    script.write_text("import sys\nfrom edge_irst.cli import main\nsys.exit(main())\n")
    for command in (["--help"], ["info"]):
        result = subprocess.run([str(python), str(script), *command], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, (command, result.stderr)


def test_cli_help_is_torch_free():
    probe = ("import sys\nfrom edge_irst.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "assert 'torch' not in sys.modules\nprint('clean')")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "edge-irst" in result.stdout and "clean" in result.stdout
