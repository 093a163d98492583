"""``python -m effnet.study``: the study's experiments: scaling methods, the alpha/beta/gamma grid (the code: ``effnet.experiments.study``)."""

import sys

from effnet.experiments.study import main

if __name__ == "__main__":
    sys.exit(main())
