"""Console scripts (``pip install`` puts them on PATH): the same programs as ``python -m ablate.<tool>``
(``[project.scripts]`` in pyproject.toml).

``ablate-run`` is :func:`ablate.run.main` itself (Hydra: shell completion, ``--help``).
The others run their module as ``-m`` does, so each keeps its one command line
whether it is a module or a package with a ``__main__``.
"""

from __future__ import annotations

import runpy


def report() -> None:
    """``ablate-report SWEEP_DIR [...]``: ``python -m ablate.report``."""
    runpy.run_module("ablate.report", run_name="__main__", alter_sys=True)


def inspect() -> None:
    """``ablate-inspect RUN_DIR | model=NAME ...``: ``python -m ablate.inspect``."""
    runpy.run_module("ablate.inspect", run_name="__main__", alter_sys=True)
