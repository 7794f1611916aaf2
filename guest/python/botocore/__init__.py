"""Nexus stand-in for botocore: only the modules handler code imports next to boto3
(``botocore.exceptions``, ``botocore.response``, ``botocore.config``)."""
