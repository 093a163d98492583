"""``python -m effnet.slurm``: the Slurm backend's watcher (the code: ``effnet.queue.slurm``)."""

import sys

from effnet.queue.slurm import main

if __name__ == "__main__":
    sys.exit(main())
