"""Vision-language models: registry, the LLaVA model with dense connector, loading, legacy conversion.

Importing this package registers the ``exgra_llava`` config/model type with the transformers Auto
classes, so checkpoints with a dense connector load through ``AutoModelForImageTextToText``.
"""

from exgra.models.config import ModelConfig
from exgra.models.image_processor import ImageProcessor, to_rgb
from exgra.models.modeling import (
    ExgraLlavaConfig,
    ExgraLlavaForConditionalGeneration,
    ExgraLlavaModel,
    VisionProjector,
    connector_layer_groups,
    dense_connector_features,
)
from exgra.models.registry import (
    ModelBundle,
    ModelSpec,
    build_model,
    create_model,
    get_model_spec,
    list_models,
    load_model,
)
from exgra.models.tokenizer import add_image_tokens, build_tiny_tokenizer

__all__ = [
    "ExgraLlavaConfig",
    "ExgraLlavaForConditionalGeneration",
    "ExgraLlavaModel",
    "ImageProcessor",
    "ModelBundle",
    "ModelConfig",
    "ModelSpec",
    "VisionProjector",
    "add_image_tokens",
    "build_model",
    "build_tiny_tokenizer",
    "connector_layer_groups",
    "create_model",
    "dense_connector_features",
    "get_model_spec",
    "list_models",
    "load_model",
    "to_rgb",
]
