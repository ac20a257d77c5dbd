"""``python -m mnistflow.cli``: the same program as the ``mnistflow`` script (how
``mnistflow tune --workers N`` starts its worker processes with this interpreter)."""

import sys

from mnistflow.cli import main

sys.exit(main())
