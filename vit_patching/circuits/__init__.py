"""Circuit discovery on ViTs: attribution patching (AtP/AtP*), a first-order CAAP estimate, edge attribution
patching (EAP, EAP-IG) over the head/MLP graph, circuit selection and faithfulness evaluation through the
patching engine, and figures.

Example:
    >>> from vit_patching.circuits import atp_layer_sweep, eap, select_circuit, evaluate_circuit
    >>> scores = eap(model, clean, corrupted, "logit_diff")
    >>> circuit = select_circuit(scores, top_n=20)
    >>> evaluate_circuit(model, circuit, clean, corrupted, "logit_diff").faithfulness
"""

from .atp import atp_heads, atp_layer_sweep
from .common import Verification

__all__ = ["Verification", "atp_heads", "atp_layer_sweep"]
