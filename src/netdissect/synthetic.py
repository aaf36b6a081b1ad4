"""The synthetic Broden generator, kept importable here: it lives in netdissect.data.synthetic
(split by idea: vocabulary, colors, geometry, textures, materials, objects, scenes, writer)."""
from __future__ import annotations

import sys

from .data.synthetic import *  # noqa: F401,F403  (the public names, as before)
from .data.synthetic import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
