"""AlexNet model and training (needs torch)."""
