"""``python -m effnet.jobs``: the training queue: submit a run, list runs, the runner (the code: ``effnet.queue.jobs``)."""

import sys

from effnet.queue.jobs import main

if __name__ == "__main__":
    sys.exit(main())
