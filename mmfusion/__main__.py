"""`python -m mmfusion` runs the CLI."""

import sys

from mmfusion.cli.main import main

sys.exit(main())
