"""``boto3.client("lambda")``: function-to-function calls through the Nexus backend."""
