"""Only what pyproject.toml cannot say: ``conf/`` stays at the repository's top level, where Hydra users
look for it, and ships inside the package as ``ablate/conf`` (found by :data:`ablate.config.CONF_DIR`);
the packed launcher's shim ships as ``hydra_plugins.ablate_packed_launcher``, the namespace package
where Hydra looks for launchers (its code is :mod:`ablate.launcher`)."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["ablate", "ablate.*"]), "ablate.conf", "hydra_plugins.ablate_packed_launcher"],
      package_dir={"ablate.conf": "conf"})
