"""`python -m key_server` / the `key-server` console script.

The CLI is imported inside main() so that a Ctrl-C while Python loads it (cryptography, asyncio, ...) still
ends with one line and the interrupted exit code instead of a traceback.
"""

import sys


def main() -> int:
    """Run the key-server command line; returns its exit code."""
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("key-server: interrupted", file=sys.stderr)
        return 130  # dkey_link.exit_codes.ExitCode.INTERRUPTED, not imported: it may be what was interrupted
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
