"""STAND-IN for cuda-python (NOT the real package). See cuda/bindings/runtime.py."""
