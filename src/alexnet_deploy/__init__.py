"""alexnet-deploy: AlexNet from PyTorch training to verified inference on edge devices.

Importing this package imports nothing heavy; each part imports its own dependencies.
"""

__version__ = "0.1.0"
