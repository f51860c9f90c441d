"""InternVL3 batch inference on Ray Data.

Importing the package is cheap: torch, transformers, decord and ray are imported only by
the code that needs them.
"""

__version__ = "0.1.0"
