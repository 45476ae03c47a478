"""``python -m effpose.cli`` (and ``torchrun ... -m effpose.cli``): the ``effpose`` command."""

import sys

from effpose.cli import main

sys.exit(main())
