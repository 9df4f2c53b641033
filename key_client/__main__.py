"""`python -m key_client` / the `key-client` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
