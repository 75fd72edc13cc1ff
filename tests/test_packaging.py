"""Packaging: the shipped configs by name (``bifpn_d2.model_zoo``), their distinct output
folders, and a wheel built from the repository that, installed in a fresh environment,
builds models from the configs it carries, without the source tree."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from detectron2.config import CfgNode
from omegaconf import DictConfig

import bifpn_d2
from bifpn_d2 import model_zoo
from bifpn_d2.engine import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns(".git", ".venv", "output", "build", "dist", "*.egg-info", "__pycache__")


def test_every_config_is_shipped_by_name():
    names = model_zoo.list_configs()
    on_disk = {p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
    assert {n for n in on_disk if not Path(n).name.startswith("Base-")} <= set(names)
    assert "lazy/EfficientDet-D0.py" in names and "lazy/common.py" not in names
    assert isinstance(model_zoo.get_config("synthetic/RetinaNet-R18-BiFPN.yaml"), CfgNode)
    assert isinstance(model_zoo.get_config("lazy/EfficientDet-D0.py"), DictConfig)
    with pytest.raises(FileNotFoundError, match="did you mean EfficientDet/EfficientDet-D0.yaml"):
        model_zoo.get_config_file("EfficientDet/EfficientDet-D0.yml")
    with pytest.raises(FileNotFoundError, match="not a config shipped"):
        model_zoo.get_config_file("../setup.py")


def test_tools_accept_shipped_config_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository: names, not paths
    for name in ("synthetic/RetinaNet-R18-BiFPN.yaml", "configs/synthetic/RetinaNet-R18-BiFPN.yaml"):
        assert load_config(name).MODEL.BACKBONE.NAME == "build_retinanet_resnet_bifpn_backbone"
    with pytest.raises(ConfigError, match="'nope.yaml' does not exist, and 'nope.yaml' is not a config"):
        load_config("nope.yaml")


def test_shipped_configs_have_distinct_output_dirs():
    """Two configs trained one after the other never share an output folder (a fresh
    training refuses one that holds checkpoints)."""
    output_dirs = {}
    for name in model_zoo.list_configs():
        cfg = model_zoo.get_config(name)
        output_dirs[name] = cfg.train.output_dir if isinstance(cfg, DictConfig) else cfg.OUTPUT_DIR
    assert len(set(output_dirs.values())) == len(output_dirs), output_dirs
    assert all(d.startswith("output/") for d in output_dirs.values()), output_dirs


def test_one_version_string():
    setup_py = (ROOT / "setup.py").read_text()
    assert "version=read_version()" in setup_py and not re.search(r"version=['\"]", setup_py)
    assert re.fullmatch(r"\d+\.\d+\.\d+", bifpn_d2.__version__)


PROBE = """
import bifpn_d2, torch
from bifpn_d2 import model_zoo
for name in ("EfficientDet/EfficientDet-D0.yaml", "synthetic/RetinaNet-R18-BiFPN.yaml"):
    model = model_zoo.get(name, device="cpu")
    print(name, type(model).__name__, sum(p.numel() for p in model.parameters()))
with torch.no_grad():
    out = model([{"image": torch.rand(3, 128, 160) * 255}])
instances = out[0]["instances"]
print("instances", tuple(instances.image_size), sorted(instances.get_fields()))
print("lazy", model_zoo.get_config("lazy/EfficientDet-D0.py").model._target_.__name__)
print("package", bifpn_d2.__file__)
print("configs", model_zoo.configs_root())
"""


def test_wheel_installs_and_builds_models(tmp_path):
    """``pip wheel`` of a clean copy of the repository (no build isolation: nothing is
    downloaded), installed with ``--no-deps`` into a fresh environment that sees this
    environment's torch and detectron2 but not the source tree."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist")], check=True, timeout=300, cwd=tmp_path)
    wheels = list((tmp_path / "dist").glob("*.whl"))
    assert [w.name for w in wheels] == [f"bifpn_d2-{bifpn_d2.__version__}-py3-none-any.whl"]
    # The library only: no lab (benchmarks/), tools or tests in the wheel.
    with zipfile.ZipFile(wheels[0]) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    assert tops == {"bifpn_d2", f"bifpn_d2-{bifpn_d2.__version__}.dist-info"}, tops

    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = str(env_dir / "bin" / "python")
    subprocess.run([*pip, "--python", python, "install", "--no-deps", "--no-index", "-q", str(wheels[0])],
                   check=True, timeout=300, cwd=tmp_path)
    site_packages = sysconfig.get_paths(vars={"base": str(env_dir), "platbase": str(env_dir)})["purelib"]
    # This environment's packages, after the new environment's own; never the repository.
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).resolve() != ROOT]
    (Path(site_packages) / "test_runner_packages.pth").write_text("\n".join(ours) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([python, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    assert lines["EfficientDet/EfficientDet-D0.yaml"].startswith("EfficientDet ")
    assert lines["synthetic/RetinaNet-R18-BiFPN.yaml"].startswith("RetinaNet ")
    assert lines["instances"] == "(128, 160) ['pred_boxes', 'pred_classes', 'scores']"
    assert lines["lazy"] == "EfficientDet"
    for key in ("package", "configs"):
        assert lines[key].startswith(site_packages), (key, lines[key])
