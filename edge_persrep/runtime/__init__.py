"""The light on-device runtime: numpy + onnxruntime + Pillow, never torch.

    from edge_persrep.runtime import Finder
    finder = Finder.open("my_bundle")
    (features,) = finder.embed(["photo.jpg"])
    for match in finder.find(features, task="all"):
        print(match.name, match.score, match.present, match.box)
"""

from .bundle import FORMAT_VERSION, Bundle, FeatureLayout
from .errors import BundleError, EdgePersrepError, ImageError, StoreError
from .finder import Finder, ImageFeatures, Match, decision_threshold
from .images import list_images, load_image
from .store import Prototype, PrototypeStore

__all__ = [
    "Bundle", "BundleError", "EdgePersrepError", "FORMAT_VERSION", "FeatureLayout", "Finder", "ImageError",
    "ImageFeatures", "Match", "Prototype", "PrototypeStore", "StoreError", "decision_threshold", "list_images",
    "load_image",
]
