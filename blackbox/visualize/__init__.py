"""Seeing inside the network: feature visualisation, inversion, DeconvNet projections, dissection.

A sibling of :mod:`blackbox.methods`: its outputs are images of units, data-set statistics and
embeddings rather than one heatmap for one target. It imports down only (model, gradients, graph);
the explanation methods never import it.
"""

from .dissection import Dissection, dissect, load_concepts
from .dream import deep_dream
from .embedding import Embedding, embed
from .grids import Grid, activations, filters
from .inversion import invert
from .maximize import activation_maximization
from .objectives import Objective
from .result import Visualization
from .top import TopActivations, top_activations

__all__ = ["Dissection", "Embedding", "Grid", "Objective", "Visualization", "activation_maximization", "activations",
           "deep_dream", "dissect", "embed", "filters", "invert", "load_concepts", "top_activations",
           "TopActivations"]
