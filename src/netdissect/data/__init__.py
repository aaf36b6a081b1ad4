"""Concept datasets in the Broden format: download, build from annotated sources, merge, resize."""
