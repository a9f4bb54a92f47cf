"""Storage side: raw gridded inputs to chunked, consolidated zarr stores."""
