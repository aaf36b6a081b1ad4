"""``python -m netdissect`` (and ``torchrun -m netdissect``): the command line."""
import sys

from netdissect.cli.commands import main

sys.exit(main())
