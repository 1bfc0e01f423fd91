"""`python -m mmfusion` runs the CLI."""

import sys

from mmfusion.cli import main

sys.exit(main())
