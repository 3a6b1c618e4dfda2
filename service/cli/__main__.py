"""`python -m service.cli ...`: the same command as the `service` script."""

import sys

from service.cli import main

sys.exit(main())
