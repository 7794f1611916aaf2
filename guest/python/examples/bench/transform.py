"""Benchmark function, written for real boto3, between I/O and computation: a JSON transform.
Reads a JSON array of orders, keeps the paid ones, totals the revenue per country and per
product, and writes the totals and the paid orders flattened to one line per item (JSON lines).

Event: {"bucket", "key", "output_key"}. Returns the counts, the output's size and the guest's
memory report.
"""

import json
from collections import Counter

import boto3
from guest_memory import report

s3 = boto3.client("s3")


def handler(event, context):
    orders = json.loads(s3.get_object(Bucket=event["bucket"], Key=event["key"])["Body"].read())
    by_country, by_sku, lines = Counter(), Counter(), []
    for order in orders:
        if order["status"] != "paid":
            continue
        for item in order["items"]:
            revenue = round(item["qty"] * item["price"], 2)
            by_country[order["country"]] += revenue
            by_sku[item["sku"]] += revenue
            lines.append(json.dumps({"order": order["id"], "country": order["country"], **item}))
    summary = {
        "countries": {c: round(r, 2) for c, r in sorted(by_country.items())},
        "top_products": [[s, round(r, 2)] for s, r in by_sku.most_common(20)],
    }
    body = (json.dumps(summary) + "\n" + "\n".join(lines) + "\n").encode("utf-8")
    s3.put_object(Bucket=event["bucket"], Key=event["output_key"], Body=body)
    return {"orders": len(orders), "lines": len(lines), "output_bytes": len(body), **report()}
