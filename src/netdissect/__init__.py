"""netdissect: Network Dissection for any PyTorch model.

Scores every unit of a layer against densely labeled visual concepts (Broden format), labels
the units, and counts the interpretable ones.
"""
__version__ = "0.1.0"

from netdissect.errors import ActivationError, DatasetError, LayerError, ModelError, NetDissectError, RunError

__all__ = [
    "__version__", "dissect", "DissectConfig", "DissectionResult", "LayerResult", "load_model",
    "list_layers", "BrodenDataset", "open_dataset", "NetDissectError", "DatasetError", "ModelError",
    "LayerError", "ActivationError", "RunError",
]


def __getattr__(name):
    # Lazy re-exports keep `import netdissect` (and the CLI's --help) fast.
    if name in ("dissect", "DissectConfig", "DissectionResult", "LayerResult"):
        from netdissect.engine import pipeline as _d
        return getattr(_d, name)
    if name == "load_model":
        from netdissect.models.specs import load_model
        return load_model
    if name == "list_layers":
        from netdissect.models.capture import list_layers
        return list_layers
    if name in ("BrodenDataset", "open_dataset"):
        from netdissect.data import broden
        return getattr(broden, name)
    raise AttributeError(f"module 'netdissect' has no attribute {name!r}")
