"""``botocore.config.Config``: accepted so client code constructs unchanged. Its settings
(retries, timeouts, signing, endpoints) concern HTTP to AWS, which Nexus replaces; they are kept
as attributes and otherwise ignored."""


class Config:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)
