"""``python -m fedsynth``."""

import sys

from fedsynth.cli import main

sys.exit(main())
