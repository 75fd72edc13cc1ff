"""bifpn_d2: FPN and BiFPN necks for Detectron2.

detectron2 itself is deliberately not listed in ``install_requires``: its authors do not
publish it on the package index, and a user who built it from source must not get a second
copy. ``tools/setup_env.sh`` installs it when it is missing.
"""
from setuptools import find_packages, setup

setup(
    name="bifpn_d2",
    version="0.1.0",
    description="FPN and BiFPN (EfficientDet) feature pyramids as Detectron2 backbones",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["bifpn_d2", "bifpn_d2.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "fvcore",
        "timm>=0.9",
        "numpy<2",
        "matplotlib",
        "pycocotools",
    ],
    extras_require={
        "dev": [
            "pytest",
            "effdet==0.4.1",
            "onnx",
            "onnxruntime",
            "ruff",
        ],
    },
)
