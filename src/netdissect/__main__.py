"""``python -m netdissect`` (and ``torchrun -m netdissect``): the command line."""
import sys

from .cli import main

sys.exit(main())
