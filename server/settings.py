"""Server settings: one typed class, read once at start-up from ``PLADA_*`` variables, then passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from plada.server.pipeline.config import RunConfig


class Settings(BaseSettings):
    """Every field is documented in docs/operations.md; a test checks that the two agree."""

    model_config = SettingsConfigDict(env_prefix="PLADA_", extra="ignore")

    data_dir: Path = Field(Path("plada-data"), description="uploads, pools registry and the default SQLite file")
    database_url: str = Field("", description="SQLAlchemy URL; empty means sqlite:///<data_dir>/plada.db")
    pools_dir: Path | None = Field(
        None, description="folder of pool folders registered at start-up (default <data_dir>/pools)"
    )
    host: str = Field("127.0.0.1", description="bind address of 'plada-server serve'")
    port: int = Field(8000, ge=0, le=65535, description="port of 'plada-server serve' (0 = any free port)")
    max_upload_bytes: int = Field(256 << 20, ge=1024, description="largest accepted target-data upload")
    max_inflated_bytes: int = Field(
        2 << 30, ge=1024, description="largest total a target-data archive may inflate to (zip/npz bomb guard)"
    )
    max_decoded_bytes: int = Field(
        1 << 30,
        ge=1024,
        description="largest total the decoded images of one upload may take (width x height x channels, summed "
        "from the image headers before anything is decoded)",
    )
    max_concurrent_uploads: int = Field(
        4, ge=1, le=1024, description="uploads received and checked at once per API process; more get 429"
    )
    max_uploads_per_token: int = Field(
        2,
        ge=1,
        le=1024,
        description="of those, at most this many for one token (or owner): one publisher cannot hold every slot",
    )
    upload_deadline_s: float = Field(
        300.0,
        gt=0.0,
        le=86_400.0,
        description="a publish's whole body must arrive within this many seconds (408 upload_timeout): a body "
        "trickled in a few bytes at a time cannot hold a slot for as long as its sender likes",
    )
    upload_retention_s: float = Field(
        86400.0,
        ge=0.0,
        description="a job's upload is deleted this long after the job succeeded or failed for good (0 = at once)",
    )
    report_rate_per_min: int = Field(60, ge=1, le=100_000, description="reports per token (or address) a minute")
    orphan_grace_s: float = Field(
        3600.0, ge=0.0, description="uploads no job refers to are removed at start-up once this old (crash leftovers)"
    )
    job_lease_s: float = Field(60.0, ge=5.0, le=3600.0, description="a worker must heartbeat within this time")
    job_max_attempts: int = Field(3, ge=1, le=20, description="tries of a job before it is marked failed")
    worker_poll_s: float = Field(1.0, gt=0.0, le=60.0, description="idle worker's queue polling interval")
    device: str = Field("auto", description="torch device for the worker: auto, cpu, cuda, cuda:N")
    auth: Literal["on", "off"] = Field(
        "on", description="on: publishing needs a 'publish' token, token-gated tasks a token; off: local demos only"
    )
    publish_rate_per_min: int = Field(30, ge=1, le=100_000, description="publishes per token (or address) a minute")
    weights_dir: Path | None = Field(
        None,
        description="local weights (<arch>.pth / .safetensors) of pretrained teachers; default <data_dir>/weights",
    )
    executor: Literal["local", "ray"] = Field(
        "local", description="where the worker runs pool passes: local (DataLoader workers) or ray (Ray Data actors)"
    )
    ray_address: str = Field("", description="Ray cluster address for executor=ray ('' starts a local Ray)")
    ray_actors: int = Field(2, ge=1, le=4096, description="CPU model actors when the Ray cluster has no GPUs")
    logits_ram_bytes: int = Field(
        512 << 20, ge=0, description="pool logits above this size (as float32) spill to a memory-mapped float16 file"
    )
    block_bytes: int = Field(
        64 << 20,
        ge=1 << 20,
        description="pool-wide passes read the pool's features and logits in blocks of this size (as float32)",
    )
    scratch_dir: Path | None = Field(
        None, description="where spilled logits are mapped (the file is unlinked at once); default: system temp"
    )
    onnx: bool = Field(
        True, description="frozen pretrained backbones run through ONNX Runtime on the CPU when it is installed"
    )
    teacher_cache_bytes: int = Field(
        4 << 30,
        ge=0,
        description="disk for cached teachers (pool scores per upload + teacher options + pool), so a version "
        "that changes only the selector or budget takes seconds; oldest entries go first; 0 = off",
    )
    snapshot_ttl_s: float = Field(
        1.0,
        ge=0.0,
        le=300.0,
        description="hot read routes (healthz, a task, the latest pointer's 304) answer from in-process snapshots this "
        "old at most: a new version, access change or revoked token shows within this delay; 0 = off",
    )
    latest_max_age_s: int = Field(
        5, ge=0, le=3600, description="Cache-Control max-age of a public task's latest payload (0 = no-cache)"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="server and worker logs: text lines, or one JSON object a line (request and job events)"
    )
    blob_dir: Path | None = Field(
        None,
        description="content-addressed payload blobs (sha256/<aa>/<sha256>), shared by API replicas and workers; "
        "default <data_dir>/blobs",
    )
    accel_redirect: str = Field(
        "",
        description="behind nginx: the internal location that maps to blob_dir (e.g. /_blobs/); payload GETs then "
        "answer with X-Accel-Redirect and the proxy sends the bytes; empty = the API sends them itself",
        pattern=r"^(/[A-Za-z0-9_./-]*/)?$",
    )
    front_cache_s: int = Field(
        60,
        ge=0,
        le=86_400,
        description="behind nginx: how long the front may serve a public version's bytes from its own cache before "
        "it asks the API again (X-Accel-Expires); bounds how long a task gated after being public stays readable "
        "through the front",
    )
    blob_base_url: str = Field(
        "",
        description="where public payload bytes are also served (a CDN or bucket mirroring blob_dir, e.g. "
        "https://cdn.example.com/plada/blobs): public payload GETs then answer 307 to <url>/sha256/<aa>/<sha256> "
        "with the ETag, version and signature headers; token-gated payloads never redirect there; empty = off",
        pattern=r"^(https?://[^\s?#]+[^/\s?#])?$",
    )
    thumb_cache_bytes: int = Field(
        256 << 20,
        ge=0,
        description="disk for the version pages' thumbnails (<data_dir>/thumbs), least recently read go first; "
        "0 = draw every time",
    )
    signing_key: Path | None = Field(
        None, description="ed25519 key that signs every version (created on first use); default <data_dir>/signing.key"
    )

    @field_validator("device")
    @classmethod
    def _device_ok(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'plada.db').as_posix()}"
        if self.pools_dir is None:
            self.pools_dir = self.data_dir / "pools"
        if self.weights_dir is None:
            self.weights_dir = self.data_dir / "weights"
        if self.signing_key is None:
            self.signing_key = self.data_dir / "signing.key"
        if self.blob_dir is None:
            self.blob_dir = self.data_dir / "blobs"
        return self

    def run_config(self, device: str | None = None) -> RunConfig:
        """What the pipeline needs from these settings, passed down ``run_pipeline`` (nothing below reads
        the environment). ``device`` overrides the setting (a CLI flag)."""
        from plada.shared.nn import pick_device

        return RunConfig(
            device=pick_device(device or self.device),
            executor=self.executor,
            ray_address=self.ray_address,
            ray_actors=self.ray_actors,
            logits_ram_bytes=self.logits_ram_bytes,
            block_bytes=self.block_bytes,
            scratch_dir=self.scratch_dir,
            weights_dir=self.weights_dir,
            onnx=self.onnx,
        )

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"
