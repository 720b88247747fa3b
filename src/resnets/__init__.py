"""resnets: the ResNet family of "Deep Residual Learning for Image Recognition" (He et al., 2015)."""
from .artifacts import read_weights, save
from .errors import OptionError, ResnetsError, UnknownModelError, WeightsError
from .factory import apply_state_dict, create_model, load
from .models import list_models
from .weights import Preprocessing, WeightSpec, get_weights, list_weights

__version__ = "0.1.0"

__all__ = [
    "OptionError",
    "Preprocessing",
    "ResnetsError",
    "UnknownModelError",
    "WeightSpec",
    "WeightsError",
    "apply_state_dict",
    "create_model",
    "get_weights",
    "list_models",
    "list_weights",
    "load",
    "read_weights",
    "save",
]
