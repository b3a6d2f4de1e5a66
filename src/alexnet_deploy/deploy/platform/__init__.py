"""Facts about the machine a bundle runs on: ``cpu`` (ISA flags, int8 safety), ``cuda`` (GPUs through
cuda-python) and ``system`` (packages, Jetson model and power mode)."""
