"""Circuit discovery on ViTs: attribution patching (AtP/AtP*), a first-order CAAP estimate, edge attribution
patching (EAP, EAP-IG on inputs and on activations), exact per-edge patching, AtP* GradDrop and information flow routes over the
head/MLP graph, interventions (corrupted, zero, mean, mean_positional, resample, optimal), circuit selection and
faithfulness evaluation through the patching engine, MIB-style scorer comparison (CPR / CMD, AUROC against a
known circuit), figures, and scoring over whole data sets of image pairs (chunked, sharded, resumable).

Example:
    >>> from vit_patching.circuits import eap_ig, evaluate_circuit, select_circuit
    >>> scores = eap_ig(model, clean, corrupted, "logit_diff")
    >>> circuit = select_circuit(scores, top_n=20)
    >>> evaluate_circuit(model, circuit, clean, corrupted, "logit_diff").faithfulness
"""

from .atp import atp_heads, atp_layer_sweep
from .atp_latents import atp_latents
from .caap_estimate import CAAPEstimate, caap_estimate
from .common import Verification
from .compare import (
    MIB_SHARES, FaithfulnessCurve, ScorerComparison, cmd, compare_scorers, cpr, curves_figure, default_scorers,
    faithfulness_by_size,
)
from .dataset import EdgeScoreRun, load_edge_scores, score_edges_dataset
from .eap import eap, eap_ig
from .evaluate import CircuitEvaluation, evaluate_circuit, faithfulness_curve
from .exact import exact_edge_cost, exact_edge_scores
from .features import (
    FeatureCurve, FeatureEdgeScores, FeatureEvaluation, evaluate_features, feature_eap, feature_faithfulness_curve,
)
from .graph import Circuit, EdgeScores, Graph, select_circuit
from .known import edge_auroc
from .node_edges import atp_node_edges
from .pairs import PairSet, folder_pairs, image_pairs, zoo_pairs
from .interventions import ABLATIONS, Ablation, ablation_values, derangement
from .neurons import NeuronCircuit, NeuronEvaluation, NeuronScores, evaluate_neurons, neuron_scores, select_neurons
from .plot import circuit_figure, faithfulness_figure
from .scorers import atp_graddrop, eap_ig_activations, information_flow_routes
from .selection import node_scores, select_nodes

__all__ = [
    "EdgeScoreRun", "PairSet", "folder_pairs", "image_pairs", "load_edge_scores", "score_edges_dataset", "zoo_pairs",
    "MIB_SHARES", "FaithfulnessCurve", "ScorerComparison", "cmd", "compare_scorers", "cpr", "curves_figure",
    "atp_node_edges", "default_scorers", "edge_auroc", "exact_edge_cost", "exact_edge_scores", "faithfulness_by_size",
    "ABLATIONS", "Ablation", "ablation_values", "atp_graddrop", "derangement", "eap_ig_activations",
    "information_flow_routes", "node_scores", "select_nodes", "NeuronCircuit", "NeuronEvaluation", "NeuronScores",
    "evaluate_neurons", "neuron_scores", "select_neurons",
    "FeatureCurve", "FeatureEdgeScores", "FeatureEvaluation", "evaluate_features", "feature_eap",
    "feature_faithfulness_curve",
    "CAAPEstimate", "Circuit", "CircuitEvaluation", "EdgeScores", "Graph", "Verification", "atp_heads", "atp_latents",
    "atp_layer_sweep", "caap_estimate", "circuit_figure", "eap", "eap_ig", "evaluate_circuit",
    "faithfulness_curve", "faithfulness_figure", "select_circuit",
]
