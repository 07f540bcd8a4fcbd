"""``python -m runner`` == ``runner``."""

import sys

from .cli import main

sys.exit(main())
