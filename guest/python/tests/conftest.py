"""Fixtures: the real Nexus backend on a temp config, and a region for this test process.

The shim's channel is per process and opened on first use, so the whole session shares one
region (NEXUS_REGION is set before any call); subprocess tests get regions of their own.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PYTHON_DIR = Path(__file__).resolve().parents[1]
REPO = PYTHON_DIR.parents[1]
BUCKET = "test-bucket"
STARTUP_TIMEOUT_S = 60
# The local-directory store keeps neither ContentType nor Metadata (backend/src/storage.rs,
# `keeps_attributes`): objects read back without them.
KEEPS_ATTRIBUTES = False


def stored(content_type, metadata):
    """The (ContentType, Metadata) a get answers for an object put with these."""
    return (content_type, metadata) if KEEPS_ATTRIBUTES else (None, {})


CONFIG = """\
api: {{ socket: {tmp}/nexus.sock }}
storage: {{ url: "file://{tmp}/objects" }}
region: {{ dir: {tmp}/regions, size: 32MiB, buffer_size: 1MiB }}
writeback: {{ dir: {tmp}/spool }}
default_policy:
  grants:
    - {{ bucket: test-bucket, access: [read, write, list, delete] }}
    - {{ bucket: other, prefix: "public/", access: [read] }}
  max_object_size: 1GiB
  invoke: [not-deployed]
"""


def _nexus_bin():
    path = Path(os.environ.get("NEXUS_BIN", REPO / "target" / "debug" / "nexus"))
    if not path.exists():
        subprocess.run(
            ["cargo", "build", "-p", "nexus-backend", "-p", "nexus-guest"], cwd=REPO, check=True
        )
    return path


class Backend:
    """A running `nexus backend`; `region(name)` creates a function's region file."""

    def __init__(self, binary, tmp):
        self.binary = binary
        self.tmp = tmp
        self.socket = tmp / "nexus.sock"
        self.log = tmp / "backend.log"
        for bucket in (BUCKET, "other"):
            (tmp / "objects" / bucket).mkdir(parents=True)
        config = tmp / "nexus.yaml"
        config.write_text(CONFIG.format(tmp=tmp))
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [str(binary), "backend", "--config", str(config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"nexus backend did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def region(self, function_name):
        created = subprocess.run(
            [str(self.binary), "region", "create", "--socket", str(self.socket), function_name],
            capture_output=True,
            text=True,
        )
        if created.returncode != 0:
            pytest.fail(
                f"region create failed: {created.stderr}\nbackend log:\n{self.log.read_text()}"
            )
        return created.stdout.strip()

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def backend(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nexus")
    server = Backend(_nexus_bin(), tmp)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def region(backend):
    """This process's region; every in-process shim call goes through it."""
    path = backend.region("shim-tests")
    os.environ["NEXUS_REGION"] = path
    return path


@pytest.fixture
def s3(region):
    import boto3

    return boto3.client("s3")


@pytest.fixture
def prefix(request):
    """A key prefix private to the test."""
    return request.node.name.replace("[", "-").replace("]", "") + "/"


def _run_runtime(args, env, stdin):
    return subprocess.run(
        [sys.executable, "-m", "nexus_runtime", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=PYTHON_DIR,
        timeout=120,
    )


@pytest.fixture
def runtime():
    """Runs `python -m nexus_runtime ARGS` without a region (for handlers that make no calls);
    `env` adds variables."""
    base = {k: v for k, v in os.environ.items() if k != "NEXUS_REGION"}
    base["PYTHONPATH"] = str(PYTHON_DIR)
    return lambda args, stdin=None, env=None: _run_runtime(args, {**base, **(env or {})}, stdin)


@pytest.fixture
def runtime_with_region(backend):
    """Runs `python -m nexus_runtime ARGS` on a region of its own for `function_name`."""

    def run(function_name, args, stdin=None):
        env = dict(
            os.environ, PYTHONPATH=str(PYTHON_DIR), NEXUS_REGION=backend.region(function_name)
        )
        return _run_runtime(args, env, stdin)

    return run
