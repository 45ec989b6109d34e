"""``python -m ablate.inspect``: see :mod:`ablate.inspect.cli`."""

import sys

from .cli import main

sys.exit(main())
