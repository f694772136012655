"""``python -m wdistill.cli``: the ``wdistill`` command."""
import sys

from wdistill.cli import main

sys.exit(main())
