"""snapshop: visual product search. A shopper's photo in, the matching catalog products out."""

__version__ = "0.1.0"
