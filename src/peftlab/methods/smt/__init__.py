"""Sparse Matrix Tuning (SMT): config, block selection, block-sparse linear and the method."""

from peftlab.methods.smt.config import SmtConfig
from peftlab.methods.smt.layer import BlockSparseLinear
from peftlab.methods.smt.method import SparseMatrixTuning

__all__ = ["BlockSparseLinear", "SmtConfig", "SparseMatrixTuning"]
