"""A real MinIO server on loopback, stoppable and restartable to simulate outages."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .procs import Proc, free_port, wait_until


@dataclass
class MinioServer:
    """MinIO serving `data_dir` on 127.0.0.1 with fixed root credentials."""

    binary: Path
    data_dir: Path
    log: Path
    access_key: str = "lora-admin"
    secret_key: str = "lora-secret-key-0123"
    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def endpoint(self) -> str:
        """host:port, as the minio SDK and the trainer's S3_ENDPOINT take it."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> MinioServer:
        """Starts the server (same port and data on a restart) and waits until it is ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = Proc("minio", [
            str(self.binary), "server", str(self.data_dir), "--address", self.endpoint,
            "--console-address", f"127.0.0.1:{free_port()}", "--quiet",
        ], self.log, env={"MINIO_ROOT_USER": self.access_key, "MINIO_ROOT_PASSWORD": self.secret_key,
                          "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"}).start()
        wait_until(self.ready, timeout, f"MinIO on {self.endpoint}\n{self.proc.tail()}")
        return self

    def ready(self) -> bool:
        with urllib.request.urlopen(f"http://{self.endpoint}/minio/health/ready", timeout=2) as resp:
            return resp.status == 200

    def stop(self) -> None:
        """Stops the server; its data stays for the next start."""
        if self.proc:
            self.proc.stop()

    def client(self):
        """A minio SDK client with the root credentials."""
        from minio import Minio

        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)

    def env(self) -> dict[str, str]:
        """The storage environment a trainer process gets (see docs/CONTRACTS.md)."""
        return {"S3_ENDPOINT": self.endpoint, "S3_SECURE": "false",
                "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
