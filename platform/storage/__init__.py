"""Storage: the `Store` protocol of the prompt table and the rules its backends share (`base`), a local folder
and `store_for_uri` (`stores`), S3 through boto3 (`s3`), plus reading data files by URI. The S3 endpoint is passed
explicitly (`endpoint_url=`) by whoever reads the config or CLI flag; there is no module-global default."""
