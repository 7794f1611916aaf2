"""python -m nexus_runtime: the compress example end to end, and handler errors."""

import gzip
import json
import time

from conftest import BUCKET, PYTHON_DIR, stored

COMPRESS = str(PYTHON_DIR / "examples" / "compress" / "handler.py") + ":handler"


def test_compress_example_end_to_end(s3, prefix, runtime_with_region):
    text = b"Nexus keeps handler code unchanged. " * 5000
    s3.put_object(Bucket=BUCKET, Key=prefix + "input.txt", Body=text)
    event = {"bucket": BUCKET, "key": prefix + "input.txt", "output_key": prefix + "input.txt.gz"}
    done = runtime_with_region(
        "compress", ["--handler", COMPRESS, "--event", "-"], json.dumps(event)
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["input_bytes"] == len(text)
    assert result["output_key"] == prefix + "input.txt.gz"
    assert 0 < result["ratio"] < 0.05
    out = s3.get_object(Bucket=BUCKET, Key=prefix + "input.txt.gz")
    assert (out.get("ContentType"), out["Metadata"]) == stored(
        "application/gzip", {"source": prefix + "input.txt"}
    )
    assert out["ETag"] == result["etag"]
    assert gzip.decompress(out["Body"].read()) == text
    assert result["output_bytes"] == out["ContentLength"]


def test_handler_errors_are_reported_like_lambda(runtime, tmp_path):
    handler = tmp_path / "failing.py"
    handler.write_text(
        "def handler(event, context):\n"
        "    print('to the log')\n"
        "    assert context.function_name == 'failing'\n"
        "    assert context.get_remaining_time_in_millis() > 0\n"
        "    raise ValueError('bad ' + event['what'])\n"
    )
    (tmp_path / "event.json").write_text('{"what": "input"}')
    done = runtime(["--handler", f"{handler}:handler", "--event", str(tmp_path / "event.json")])
    assert done.returncode == 1
    error = json.loads(done.stdout)
    assert error["errorType"] == "ValueError" and error["errorMessage"] == "bad input"
    assert any("failing.py" in frame for frame in error["stackTrace"])
    assert "to the log" in done.stderr


def test_handler_result_and_context(runtime, tmp_path):
    handler = tmp_path / "echo.py"
    handler.write_text(
        "def main(event, context):\n    return {'event': event, 'id': context.aws_request_id}\n"
    )
    done = runtime(["--handler", f"{handler}:main", "--event", "-"], '{"n": 1}')
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["event"] == {"n": 1} and len(result["id"]) == 36


def test_the_shim_wins_over_a_vendored_boto3(runtime, tmp_path):
    (tmp_path / "boto3").mkdir()
    (tmp_path / "boto3" / "__init__.py").write_text("raise ImportError('vendored boto3')\n")
    (tmp_path / "app.py").write_text(
        "import boto3\n\ndef handler(event, context):\n    return boto3.__file__\n"
    )
    done = runtime(["--handler", f"{tmp_path / 'app.py'}:handler", "--event", "-"], "{}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout).startswith(str(PYTHON_DIR))


def test_a_handler_is_stopped_at_its_timeout_even_if_it_swallows_exceptions(runtime, tmp_path):
    handler = tmp_path / "slow.py"
    handler.write_text(
        "import time\n\n"
        "def handler(event, context):\n"
        "    try:\n"
        "        time.sleep(30)\n"
        "    except Exception:\n"
        "        return 'swallowed'\n"
    )
    started = time.monotonic()
    done = runtime(["--handler", f"{handler}:handler", "--timeout", "0.3", "--event", "-"], "{}")
    assert time.monotonic() - started < 10
    assert done.returncode == 1, done.stdout + done.stderr
    error = json.loads(done.stdout)
    assert error == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": "Task timed out after 0.30 seconds",
        "stackTrace": [],
    }
