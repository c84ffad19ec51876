"""``python -m plada.server.cli``: the same as the ``plada-server`` command."""

import sys

from plada.server.cli import main

sys.exit(main())
