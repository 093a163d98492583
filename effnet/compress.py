"""``python -m effnet.compress``: int8 and pruned variants of a finished run, measured (the code: ``effnet.compression.compress``)."""

import sys

from effnet.compression.compress import main

if __name__ == "__main__":
    sys.exit(main())
