"""exgra: train and evaluate medical vision-language models with ExGra-Med multi-graph alignment.

Research use only. Released ExGra-Med checkpoints and data are CC BY-NC 4.0; nothing here is a
medical device or fit for clinical use.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("exgra")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from exgra.errors import ExgraError

__all__ = ["ExgraError", "__version__"]
