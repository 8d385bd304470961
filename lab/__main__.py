"""``python -m lab``: run the whole lab (see :mod:`lab.stages`)."""

import sys

from lab.stages import main

sys.exit(main())
