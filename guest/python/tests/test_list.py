"""list_objects_v2, its paginator, and the resource collections built on it."""

import pytest

from conftest import BUCKET

KEYS = ["a/1", "a/2", "b/1", "c", "d"]


@pytest.fixture
def listed(s3, prefix):
    for key in KEYS:
        s3.put_object(Bucket=BUCKET, Key=prefix + key, Body=key.encode())
    return [prefix + key for key in KEYS]


def test_list_with_prefix(s3, prefix, listed):
    page = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    assert [item["Key"] for item in page["Contents"]] == listed
    assert page["KeyCount"] == 5 and page["IsTruncated"] is False
    assert page["Contents"][0]["Size"] == 3
    assert page["Contents"][0]["LastModified"].tzinfo is not None
    assert page["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_list_with_delimiter(s3, prefix, listed):
    page = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, Delimiter="/")
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == [prefix + "a/", prefix + "b/"]
    assert [item["Key"] for item in page["Contents"]] == [prefix + "c", prefix + "d"]


def test_list_pages(s3, prefix, listed):
    pages, token = [], None
    while True:
        kwargs = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, MaxKeys=2, **kwargs)
        pages.append([item["Key"] for item in page["Contents"]])
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert pages == [listed[0:2], listed[2:4], listed[4:]]


def test_paginator(s3, prefix, listed):
    paginator = s3.get_paginator("list_objects_v2")
    pages = list(paginator.paginate(Bucket=BUCKET, Prefix=prefix, PaginationConfig={"PageSize": 2}))
    assert len(pages) == 3
    assert [item["Key"] for page in pages for item in page["Contents"]] == listed
    capped = paginator.paginate(
        Bucket=BUCKET, Prefix=prefix, PaginationConfig={"MaxItems": 3, "PageSize": 2}
    )
    assert [item["Key"] for page in capped for item in page["Contents"]] == listed[:3]


def test_start_after(s3, prefix, listed):
    page = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, StartAfter=prefix + "b/1")
    assert [item["Key"] for item in page["Contents"]] == listed[3:]


def test_resource_collections(s3, prefix, listed):
    import boto3

    bucket = boto3.resource("s3").Bucket(BUCKET)
    summaries = list(bucket.objects.filter(Prefix=prefix + "a/"))
    assert [o.key for o in summaries] == listed[:2]
    assert summaries[0].size == 3 and summaries[0].bucket_name == BUCKET
    assert summaries[0].e_tag and summaries[0].last_modified.tzinfo is not None
    assert summaries[0].get()["Body"].read() == b"a/1"
    mine = [o.key for o in bucket.objects.all() if o.key.startswith(prefix)]
    assert mine == listed
    assert [o.key for o in bucket.objects.filter(Prefix=prefix).page_size(2).limit(3)] == listed[:3]
