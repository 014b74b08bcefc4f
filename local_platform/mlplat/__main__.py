"""``python -m mlplat``: the ``mlplat`` command."""

import sys

from mlplat.cli import main

sys.exit(main())
