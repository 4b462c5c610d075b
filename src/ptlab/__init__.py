"""ptlab: a pre-training lab for Transformer language models."""

from ptlab.config import Config, load_config
from ptlab.errors import PtlabError


def load_model(path, device="cpu"):
    """A ready model (eval mode) from a ptlab checkpoint directory or run directory (see `ptlab.train.checkpoint`)."""
    from ptlab.train.checkpoint import load_model as _load_model  # torch is imported only when a model is needed

    return _load_model(path, device)


__version__ = "0.1.0"
__all__ = ["Config", "PtlabError", "load_config", "load_model"]
