"""``python -m pyops``: the ``pyops`` command (see :mod:`pyops.cli`)."""
import sys

from .cli import main

sys.exit(main())
