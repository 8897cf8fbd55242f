"""`python -m trajdistill.cli ...`, as the `trajdistill` command."""
import sys

from . import main

sys.exit(main())
