"""Compositional explanations: the beam search (search) and runs of it on a run directory
(rundir)."""
