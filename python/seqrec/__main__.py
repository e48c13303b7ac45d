"""``python -m seqrec ...``: the ``seqrec`` command (also ``torchrun ... -m seqrec train ...``)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
