"""``python -m effnet.jobs``: the training queue: list, run (the runner), stop, delete (the code: ``effnet.queue.jobs``)."""

import sys

from effnet.queue.jobs import main

if __name__ == "__main__":
    sys.exit(main())
