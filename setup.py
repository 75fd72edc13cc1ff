"""bifpn_d2: FPN and BiFPN necks for Detectron2.

detectron2 itself is deliberately not listed in ``install_requires``: its authors do not
publish it on the package index, and a user who built it from source must not get a second
copy. ``tools/setup_env.sh`` installs it when it is missing.

The version is written once, in ``bifpn_d2/__init__.py``. The configs stay at the top of
the repository (``configs/``); building a wheel copies them into the package
(``bifpn_d2/model_zoo/configs``), where ``bifpn_d2.model_zoo`` finds them once installed.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    """``__version__`` of ``bifpn_d2/__init__.py``, read as text (importing the package
    would need detectron2 at build time)."""
    text = (ROOT / "bifpn_d2" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, flags=re.M).group(1)


class BuildPyWithConfigs(build_py):
    """``build_py`` that also copies ``configs/`` into ``bifpn_d2/model_zoo/configs`` of
    the build. Editable installs skip the copy: they read the checkout's ``configs/``."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "bifpn_d2" / "model_zoo" / "configs"
            self.copy_tree(str(ROOT / "configs"), str(target))


EXTRAS = {
    # tools/export_model.py --format onnx, and checking the exported file
    "export": ["onnx", "onnxruntime"],
    # tools/neck_race.py and the parity tests compare with effdet's EfficientDet
    "bench": ["effdet==0.4.1"],
    # tools/demo.py and tools/visualize_data.py: Detectron2's Visualizer imports OpenCV
    "demo": ["opencv-python-headless"],
}
EXTRAS["dev"] = ["pytest", "ruff"] + EXTRAS["export"] + EXTRAS["bench"] + EXTRAS["demo"]

setup(
    name="bifpn_d2",
    version=read_version(),
    description="FPN and BiFPN (EfficientDet) feature pyramids as Detectron2 backbones",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["bifpn_d2", "bifpn_d2.*"]),
    cmdclass={"build_py": BuildPyWithConfigs},
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "fvcore",
        "timm>=0.9",
        "matplotlib",
        "pycocotools",
        # detectron2.model_zoo (Detectron2's own configs, used for switching and LazyConfig)
        # imports pkg_resources, which setuptools 81 and later no longer ship.
        "setuptools<81",
    ],
    extras_require=EXTRAS,
)
