"""Networks: backbones, the patch classifier, and the whole-image classifier built from it."""

from mammokit.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
