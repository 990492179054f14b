"""``python -m flux`` is the ``flux`` command."""

import sys

from flux.cli import main

sys.exit(main())
