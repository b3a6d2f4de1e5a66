"""AlexNet model and training (needs torch).

``build_model`` is imported lazily so that ``import alexnet_deploy.alexnet`` stays cheap and a
missing torch becomes one clear error.
"""

from __future__ import annotations

__all__ = ["build_model"]


def __getattr__(name: str):
    if name == "build_model":
        try:
            from alexnet_deploy.alexnet.model import build_model
        except ImportError as exc:
            from alexnet_deploy.errors import MissingDependency

            raise MissingDependency(f"AlexNet needs torch and torchvision ({exc}); "
                                    "install them with: pip install 'alexnet-deploy[train]'") from exc
        return build_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
