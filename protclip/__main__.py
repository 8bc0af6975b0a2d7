"""``python -m protclip <command>``: the command-line tools that are not Ray jobs (today: ``search``)."""

import sys

from protclip.search.cli import main

if __name__ == "__main__":
    sys.exit(main())
