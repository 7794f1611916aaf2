"""The botocore exceptions handler code catches, with botocore's messages."""


class BotoCoreError(Exception):
    """Base of botocore's own errors; the message is ``fmt`` filled with the keyword arguments."""

    fmt = "An unspecified error occurred"

    def __init__(self, **kwargs):
        super().__init__(self.fmt.format(**kwargs))
        self.kwargs = kwargs


class ParamValidationError(BotoCoreError):
    fmt = "Parameter validation failed:\n{report}"


class NoCredentialsError(BotoCoreError):
    """Defined for ``except`` clauses; never raised, credentials live on the Nexus host."""

    fmt = "Unable to locate credentials"


class IncompleteReadError(BotoCoreError):
    fmt = "{actual_bytes} read, but total bytes expected is {expected_bytes}."


class ClientError(Exception):
    """An error answered by the service; ``response`` holds its ``Error`` and metadata."""

    MSG_TEMPLATE = (
        "An error occurred ({error_code}) when calling the {operation_name} "
        "operation: {error_message}"
    )

    def __init__(self, error_response, operation_name):
        error = error_response.get("Error", {})
        super().__init__(
            self.MSG_TEMPLATE.format(
                error_code=error.get("Code", "Unknown"),
                error_message=error.get("Message", "Unknown"),
                operation_name=operation_name,
            )
        )
        self.response = error_response
        self.operation_name = operation_name

    def __reduce__(self):
        # Modeled subclasses are made at run time and cannot be pickled by name.
        return ClientError, (self.response, self.operation_name)
