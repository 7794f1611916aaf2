"""``client.get_paginator("list_objects_v2")``: pages that follow NextContinuationToken."""

from boto3.exceptions import NotOffloadedError, missing_attribute, supported

_CONFIG_KEYS = ("PageSize", "MaxItems", "StartingToken")


class ListObjectsV2Paginator:
    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        raise missing_attribute("Paginator", name)

    def paginate(self, PaginationConfig=None, **kwargs):
        config = PaginationConfig or {}
        for name in config:
            if name not in _CONFIG_KEYS:
                raise NotOffloadedError(f"PaginationConfig key {name!r}", supported(_CONFIG_KEYS))
        return PageIterator(self._client, kwargs, config)


class PageIterator:
    """Iterates list_objects_v2 pages. MaxItems caps the keys and common prefixes returned."""

    def __init__(self, client, kwargs, config):
        self._client = client
        self._kwargs = kwargs
        self._config = config

    def __iter__(self):
        params = dict(self._kwargs)
        if self._config.get("StartingToken"):
            params["ContinuationToken"] = self._config["StartingToken"]
        page_size = self._config.get("PageSize", params.get("MaxKeys"))
        left = self._config.get("MaxItems")
        while True:
            sizes = [n for n in (page_size, left) if n is not None]
            if sizes:
                params["MaxKeys"] = min(sizes)
            page = self._client.list_objects_v2(**params)
            yield page
            if left is not None:
                left -= page.get("KeyCount", 0)
            if not page.get("IsTruncated") or (left is not None and left <= 0):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    def __getattr__(self, name):
        raise missing_attribute("PageIterator", name, "; iterate the pages instead")
