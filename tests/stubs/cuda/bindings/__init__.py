"""STAND-IN for cuda-python's ``cuda.bindings`` (NOT the real package). See runtime.py."""
