"""The ``model`` config section; defined in :mod:`exgra.model_specs` (torch-free), re-exported here."""

from exgra.model_specs import ModelConfig

__all__ = ["ModelConfig"]
