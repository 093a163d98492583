"""``python -m effnet.cam``: class activation maps of a run on your images (the code: ``effnet.analysis.cam``)."""

import sys

from effnet.analysis.cam import main

if __name__ == "__main__":
    sys.exit(main())
