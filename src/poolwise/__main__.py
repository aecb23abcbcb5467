"""``python -m poolwise``: the same command line as the ``poolwise`` script."""

from .cli import main

if __name__ == "__main__":
    main()
