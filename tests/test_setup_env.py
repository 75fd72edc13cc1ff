"""tools/setup_env.sh with a detectron2 the user already has: the new environment imports
the user's detectron2 and no second copy is installed.

The user's environment is a virtual environment (made from the base interpreter, as
`python -m venv` does even from inside another one) holding a stand-in ``detectron2``
package, as after ``pip install -e`` of a source checkout, and seeing this test run's
packages (torch, timm, ...) through a ``.pth`` file, so that nothing is downloaded: pip runs
with ``PIP_NO_INDEX``, so a script that tried to install torch or detectron2 fails instead.
The stand-in delegates its submodules to the real detectron2 (``__path__``), so that
``import bifpn_d2`` works with it; its ``__file__`` and ``__version__`` are its own.
"""

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import detectron2

ROOT = Path(__file__).resolve().parents[1]
STAND_IN_VERSION = "0.6+users.own.build"


def _site_packages(env: Path) -> Path:
    paths = sysconfig.get_paths(vars={"base": str(env), "platbase": str(env)})
    return Path(paths["purelib"])


def _users_environment(env: Path) -> Path:
    """A venv (no pip: nothing is installed into it) with a stand-in detectron2 in its
    site-packages and this interpreter's packages behind it; returns the stand-in's folder."""
    venv.create(env, with_pip=False)
    site_dir = _site_packages(env)
    stand_in = site_dir / "detectron2"
    stand_in.mkdir(parents=True)
    real = os.path.dirname(detectron2.__file__)
    (stand_in / "__init__.py").write_text(
        f'"""Stand-in for a user\'s own detectron2 build."""\n__version__ = "{STAND_IN_VERSION}"\n'
        f"__path__.append({real!r})  # submodules come from a real detectron2\n"
    )
    # Every folder this test's interpreter imports packages from (not the standard library,
    # which the user's environment has, nor the repository itself).
    ours = [p for p in sys.path if p and os.path.isdir(p) and not p.startswith(sys.base_prefix)]
    ours = [p for p in ours if Path(p).resolve() != ROOT]
    (site_dir / "test_runner_packages.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    return stand_in


def _run_setup(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "tools/setup_env.sh")], env=env, capture_output=True, text=True, timeout=600
    )


def test_setup_reuses_the_users_detectron2(tmp_path):
    stand_in = _users_environment(tmp_path / "users_env")
    new_env = tmp_path / "new_env"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHON=str(tmp_path / "users_env/bin/python"), VENV=str(new_env), PIP_NO_INDEX="1")
    result = _run_setup(env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"found detectron2 in {stand_in}; reusing it" in result.stdout
    assert STAND_IN_VERSION in result.stdout  # the script's own closing check

    probe = "import bifpn_d2, detectron2; print(detectron2.__file__); print(detectron2.__version__)"
    imported = subprocess.run(
        [str(new_env / "bin/python"), "-c", probe], env=env, capture_output=True, text=True, timeout=300,
        cwd=tmp_path,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert imported.stdout.split() == [str(stand_in / "__init__.py"), STAND_IN_VERSION]
    assert not list(_site_packages(new_env).glob("*detectron2*"))  # no second copy

    again = _run_setup(env)
    assert again.returncode == 0 and "environment ready" in again.stdout
