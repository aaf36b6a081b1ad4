"""The dissection itself: the four steps (pipeline) over batches (loading) through the model
(forward), the tally (final_tally), the manifest, sharded over processes (distributed)."""
