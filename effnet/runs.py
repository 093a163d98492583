"""``python -m effnet.runs export|import``: the bundle command's older name (``effnet.experiments.bundle``)."""

import sys

from effnet.experiments.bundle import main

if __name__ == "__main__":
    sys.argv[0] = "python -m effnet.bundle"
    sys.exit(main())
