"""``boto3.resource("s3")``: Bucket, Object and ObjectSummary over the shim's client."""

from boto3.exceptions import missing_attribute


class _Meta:
    def __init__(self, client):
        self.client = client


class _Resource:
    """Resources answer only what they define; anything else fails loudly."""

    def __getattr__(self, name):
        raise missing_attribute(f"s3.{type(self).__name__}", name)


class S3Resource(_Resource):
    def __init__(self, client):
        self.meta = _Meta(client)

    def Bucket(self, name):
        return Bucket(self.meta.client, name)

    def Object(self, bucket_name, key):
        return Object(self.meta.client, bucket_name, key)


class Bucket(_Resource):
    def __init__(self, client, name):
        self.meta = _Meta(client)
        self.name = name
        self.objects = ObjectsCollection(client, name, {})

    def Object(self, key):
        return Object(self.meta.client, self.name, key)

    def put_object(self, **kwargs):
        self.meta.client.put_object(Bucket=self.name, **kwargs)
        return self.Object(kwargs["Key"])

    def upload_file(self, Filename, Key, ExtraArgs=None, Callback=None, Config=None):
        self.meta.client.upload_file(Filename, self.name, Key, ExtraArgs, Callback, Config)

    def download_file(self, Key, Filename, ExtraArgs=None, Callback=None, Config=None):
        self.meta.client.download_file(self.name, Key, Filename, ExtraArgs, Callback, Config)

    def upload_fileobj(self, Fileobj, Key, ExtraArgs=None, Callback=None, Config=None):
        self.meta.client.upload_fileobj(Fileobj, self.name, Key, ExtraArgs, Callback, Config)

    def download_fileobj(self, Key, Fileobj, ExtraArgs=None, Callback=None, Config=None):
        self.meta.client.download_fileobj(self.name, Key, Fileobj, ExtraArgs, Callback, Config)


class ObjectsCollection(_Resource):
    """``bucket.objects``: lazily lists ObjectSummary items, page by page."""

    def __init__(self, client, bucket_name, params, limit=None):
        self._client = client
        self._bucket_name = bucket_name
        self._params = params
        self._limit = limit

    def all(self):
        return self

    def filter(self, **kwargs):
        return ObjectsCollection(
            self._client, self._bucket_name, {**self._params, **kwargs}, self._limit
        )

    def page_size(self, count):
        return self.filter(MaxKeys=count)

    def limit(self, count):
        return ObjectsCollection(self._client, self._bucket_name, self._params, count)

    def __iter__(self):
        paginator = self._client.get_paginator("list_objects_v2")
        count = 0
        for page in paginator.paginate(Bucket=self._bucket_name, **self._params):
            for item in page.get("Contents", []):
                if self._limit is not None and count >= self._limit:
                    return
                count += 1
                yield ObjectSummary(self._client, self._bucket_name, item)


class Object(_Resource):
    """An object; its attributes (content_length, e_tag, ...) come from a HEAD on first use."""

    _ATTRIBUTES = {
        "content_length": "ContentLength",
        "content_type": "ContentType",
        "e_tag": "ETag",
        "last_modified": "LastModified",
        "metadata": "Metadata",
        "accept_ranges": "AcceptRanges",
    }

    def __init__(self, client, bucket_name, key):
        self.meta = _Meta(client)
        self.bucket_name = bucket_name
        self.key = key
        self._head = None

    def load(self):
        self._head = self.meta.client.head_object(Bucket=self.bucket_name, Key=self.key)

    reload = load

    def __getattr__(self, name):
        if name in self._ATTRIBUTES:
            if self._head is None:
                self.load()
            return self._head.get(self._ATTRIBUTES[name])
        return super().__getattr__(name)

    def Bucket(self):
        return Bucket(self.meta.client, self.bucket_name)

    def get(self, **kwargs):
        return self.meta.client.get_object(Bucket=self.bucket_name, Key=self.key, **kwargs)

    def put(self, **kwargs):
        return self.meta.client.put_object(Bucket=self.bucket_name, Key=self.key, **kwargs)

    def delete(self):
        return self.meta.client.delete_object(Bucket=self.bucket_name, Key=self.key)

    def upload_file(self, Filename, ExtraArgs=None, Callback=None, Config=None):
        self.meta.client.upload_file(
            Filename, self.bucket_name, self.key, ExtraArgs, Callback, Config
        )

    def download_file(self, Filename, ExtraArgs=None, Callback=None, Config=None):
        self.meta.client.download_file(
            self.bucket_name, self.key, Filename, ExtraArgs, Callback, Config
        )

    def upload_fileobj(self, Fileobj, ExtraArgs=None, Callback=None, Config=None):
        self.meta.client.upload_fileobj(
            Fileobj, self.bucket_name, self.key, ExtraArgs, Callback, Config
        )

    def download_fileobj(self, Fileobj, ExtraArgs=None, Callback=None, Config=None):
        self.meta.client.download_fileobj(
            self.bucket_name, self.key, Fileobj, ExtraArgs, Callback, Config
        )


class ObjectSummary(_Resource):
    """A listed object: key, size, last_modified, e_tag, storage_class, bucket_name."""

    def __init__(self, client, bucket_name, item):
        self.meta = _Meta(client)
        self.bucket_name = bucket_name
        self.key = item["Key"]
        self.size = item.get("Size")
        self.last_modified = item.get("LastModified")
        self.e_tag = item.get("ETag")
        self.storage_class = item.get("StorageClass")

    def Object(self):
        return Object(self.meta.client, self.bucket_name, self.key)

    def get(self, **kwargs):
        return self.Object().get(**kwargs)

    def delete(self):
        return self.Object().delete()
