"""`python -m fl_server.cli`: the `fedmsr` console script without installing it."""

import sys

from fl_server.cli import main

sys.exit(main())
