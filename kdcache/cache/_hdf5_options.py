"""The compressions ``kdcache export`` can write an HDF5 copy with (``kdcache.cache._export``), without h5py."""

__all__ = ["COMPRESSIONS"]

COMPRESSIONS = ("gzip", "lzf")
