"""``python -m netdissect.cli``, the same as ``python -m netdissect``."""
import sys

from netdissect.cli.commands import main

sys.exit(main())
