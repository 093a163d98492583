"""``python -m effnet.bundle``: a run or a study as one zip: export and import (the code: ``effnet.experiments.bundle``)."""

import sys

from effnet.experiments.bundle import main

if __name__ == "__main__":
    sys.exit(main())
