"""Storage: the `Store` protocol of the prompt table and its backends, a local folder (`stores`) and S3 through
boto3 (`s3`), plus reading data files by URI."""
