"""kdcache: cache a vision teacher's outputs over replayable augmented views once, distil many students."""

from kdcache.errors import KdcacheError

__version__ = "0.1.0"
__all__ = ["KdcacheError", "__version__"]
