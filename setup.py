"""Only what pyproject.toml cannot say: ``conf/`` stays at the repository's top level, where Hydra users
look for it, and ships inside the package as ``ablate/conf`` (found by :data:`ablate.config.CONF_DIR`)."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["ablate", "ablate.*"]), "ablate.conf"], package_dir={"ablate.conf": "conf"})
