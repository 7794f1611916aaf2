"""The S3 service of the boto3 shim: every call goes to the Nexus host over the channel."""
