"""ptlab: a pre-training lab for Transformer language models."""

from ptlab.config import Config, load_config
from ptlab.errors import PtlabError
from ptlab.train.checkpoint import load_model

__version__ = "0.1.0"
__all__ = ["Config", "PtlabError", "load_config", "load_model"]
