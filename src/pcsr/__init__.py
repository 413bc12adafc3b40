"""pcsr: image super-resolution that spends compute only where the image needs it (PCSR, ECCV 2024)."""
from .api import Model, Upscaled, load
from .errors import ImageError, PcsrError, WeightsError
from .models.pcsr import Routing

__version__ = "0.1.0"
__all__ = ["load", "Model", "Upscaled", "Routing", "PcsrError", "ImageError", "WeightsError", "__version__"]
