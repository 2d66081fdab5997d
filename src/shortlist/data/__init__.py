"""The data contract: three Parquet tables in a dataset directory (local or s3://)."""
