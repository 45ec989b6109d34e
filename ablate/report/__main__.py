"""``python -m ablate.report``: see :mod:`ablate.report.cli`."""

import sys

from .cli import main

sys.exit(main())
