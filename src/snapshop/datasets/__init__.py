"""Demo and evaluation data: a Fashion-MNIST product catalog, simulated shopper photos, real multi-view photos."""

from snapshop.datasets.fashion import FASHION_CATEGORIES, build_fashion_catalog, load_fashion_mnist
from snapshop.datasets.multiview import build_real_multiview
from snapshop.datasets.photos import list_background_photos
from snapshop.datasets.shopper import build_shopper_queries

__all__ = [
    "FASHION_CATEGORIES",
    "build_fashion_catalog",
    "build_real_multiview",
    "build_shopper_queries",
    "list_background_photos",
    "load_fashion_mnist",
]
