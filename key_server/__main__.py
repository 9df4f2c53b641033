"""`python -m key_server` / the `key-server` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
