"""``python -m wdistill``: the ``wdistill`` command, as ``python -m wdistill.cli`` (torchrun's ``-m`` takes either)."""
import sys

from wdistill.cli import main

sys.exit(main())
