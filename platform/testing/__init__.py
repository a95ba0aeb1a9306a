"""Test and development helpers that the engine never imports: a throw-away S3-compatible server
(SeaweedFS on loopback) for the S3 tests, benchmarks and `make s3-dev`. Not imported by the SDK."""
