"""``python -m plada.client.cli``: the same as the ``plada-client`` command."""

import sys

from plada.client.cli import main

sys.exit(main())
