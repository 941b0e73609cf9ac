"""`python -m mammokit` is the same as the `mammokit` console command."""

import sys

from mammokit.cli import main

sys.exit(main())
