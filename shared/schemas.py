"""Pydantic models that cross the wire. Field constraints stop bad input at the edge, on both sides."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from plada.shared.payload import CODECS

TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
DEFAULT_KEEP = 0.01
MAX_PAYLOAD_BYTES = 1_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherOptions(_Strict):
    """How the server trains its teacher on the publisher's labelled data."""

    arch: str = Field(
        "auto",
        description="'auto' (a probe when the pool has a pretrained feature index, else smallcnn), 'smallcnn' "
        "(built in), 'probe' (a calibrated linear head on the pool's cached features: no pool forward pass) "
        "or a timm model name",
        max_length=100,
    )
    pretrained: bool = Field(
        False,
        description="start a timm arch from local ImageNet weights (PLADA_WEIGHTS_DIR or a weights package on the "
        "worker; never downloaded)",
    )
    finetune: Literal["full", "head"] = Field(
        "full", description="with pretrained: train every layer, or only a new classifier on the frozen body"
    )
    image_size: int | None = Field(
        None,
        ge=16,
        le=1024,
        description="teacher input side in pixels (default: the pool's image size; pretrained: that side in 128-224)",
    )
    epochs: int = Field(10, ge=1, le=300)
    batch_size: int = Field(128, ge=1, le=4096)
    lr: float = Field(1e-3, gt=0, le=1.0)
    val_fraction: float = Field(0.2, ge=0.05, le=0.5, description="share held out on the server for validation")
    seed: int = Field(0, ge=0, le=2**32 - 1)


class SelectorOptions(_Strict):
    """Which pool items to keep.

    ``auto`` (the default) lets the server try several recipes and ship the one whose proxy student scores
    best on the publisher's held-out images. A named selector uses that recipe alone; ``safety_net_share``
    > 0 then reserves that share of the budget for per-class quotas K_c ∝ N_c^α.
    """

    name: str = Field(
        "auto",
        description="'auto' or a registered selector: energy, opposite-energy, entropy, msp, random, domain, knn",
        max_length=64,
    )
    safety_net_alpha: float = Field(0.5, ge=-2.0, le=2.0, description="quota exponent α in K_c ∝ N_c^α")
    safety_net_share: float = Field(0.0, ge=0.0, le=1.0, description="share s of the budget given to quotas")
    diversity: float = Field(
        0.0, ge=0.0, le=20.0, description="0 = off; b > 0 spreads picks over feature clusters among the b·B best"
    )
    exclude_duplicates: bool = Field(
        False, description="never select pool items the leakage audit flags as (near-)duplicates of the upload"
    )
    validate_candidates: bool = Field(
        True, description="train a short proxy student per candidate to predict client accuracy (auto needs it)"
    )
    proxy: Literal["auto", "smallcnn", "probe"] = Field(
        "auto",
        description="proxy student per candidate: 'probe' (a linear head on the pool's pretrained features, what a "
        "head-only client trains; seconds), 'smallcnn' (a small CNN on pixels); auto = probe when the pool has a "
        "pretrained feature index",
    )
    proxy_epochs: int = Field(6, ge=1, le=50, description="smallcnn proxies: epochs (fewer for big selections)")
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _auto_validates(self) -> SelectorOptions:
        if self.name == "auto" and not self.validate_candidates:
            raise ValueError("selector 'auto' chooses by validation; it cannot run with validate_candidates=false")
        return self


class TaskSpec(_Strict):
    """What a publisher POSTs. Exactly one of ``keep`` (fraction of the pool) or ``max_bytes`` is used."""

    name: str = Field(pattern=TASK_NAME_PATTERN, description="task name, lowercase, used in URLs")
    classes: list[str] = Field(min_length=2, max_length=65_535)
    pool_id: str = Field(min_length=1, max_length=128, description="pool name (e.g. mini-v1) or its 64-hex id")
    keep: float | None = Field(None, gt=0.0, le=1.0)
    max_bytes: int | None = Field(None, ge=128, le=MAX_PAYLOAD_BYTES)
    tiers: int = Field(
        1, ge=1, le=16, description="priority tiers (by relevance) so a client can train on a prefix; 1 = none"
    )
    access: Literal["public", "token"] | None = Field(
        None,
        description="public: anyone may read the task and its payloads; token: readers need a token. Omitted: a "
        "new task is public and an existing one keeps its access (only its owner may change it)",
    )
    codec: str = Field(
        "auto",
        description="payload codec; auto = the smallest; paper-v1 = readable by format-1 clients",
        json_schema_extra={"enum": list(CODECS)},  # the codec registry's names (shared/payload.py), not a copy
    )
    selector: SelectorOptions = Field(default_factory=SelectorOptions)
    teacher: TeacherOptions = Field(default_factory=TeacherOptions)

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, v: str) -> str:
        if v not in CODECS:
            raise ValueError(f"unknown codec {v!r}; known: {', '.join(CODECS)}")
        return v

    @field_validator("classes")
    @classmethod
    def _classes_ok(cls, v: list[str]) -> list[str]:
        """Any language is welcome; names are stored NFC-normalised so that 'café' typed on macOS (decomposed)
        and on Linux (composed) are one class, and control characters (invisible in every UI) are refused."""
        v = [unicodedata.normalize("NFC", c) for c in v]
        if any(not c.strip() or len(c) > 200 for c in v):
            raise ValueError("class names must be 1-200 characters and not blank")
        bad = next((c for c in v if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in c)), None)
        if bad is not None:
            raise ValueError(f"class name {bad!r} contains control characters")
        if len(set(v)) != len(v):
            dup = next(c for c in v if v.count(c) > 1)
            raise ValueError(f"class names must be unique (after Unicode NFC normalisation); {dup!r} repeats")
        return v

    @model_validator(mode="after")
    def _one_budget(self) -> TaskSpec:
        if self.keep is not None and self.max_bytes is not None:
            raise ValueError("give either keep or max_bytes, not both")
        if self.keep is None and self.max_bytes is None:
            self.keep = DEFAULT_KEEP
        return self


class ErrorInfo(BaseModel):
    code: str
    message: str


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
VersionStatus = Literal["pending", "ready", "failed", "cancelled", "broken"]  # broken: its payload blob was damaged


class JobInfo(BaseModel):
    id: int
    task: str
    version: int
    state: JobState
    progress: float = Field(ge=0.0, le=1.0)
    message: str = ""
    error: ErrorInfo | None = None
    attempts: int
    created_at: datetime
    updated_at: datetime


class ReportCoverage(_Strict):
    """How much of the payload a client's own (attached) pool copy held: every item is one of exact, re-encoded
    (the same picture by its fingerprint), different (another picture under the key: not trained on) or missing."""

    total: int = Field(ge=0, le=2**31 - 1)
    exact: int = Field(ge=0, le=2**31 - 1)
    reencoded: int = Field(ge=0, le=2**31 - 1)
    different: int = Field(ge=0, le=2**31 - 1)
    missing: int = Field(ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _adds_up(self) -> ReportCoverage:
        if self.exact + self.reencoded + self.different + self.missing != self.total:
            raise ValueError("exact + reencoded + different + missing must equal total")
        return self

    @property
    def used(self) -> int:
        return self.exact + self.reencoded


class ReportIn(_Strict):
    """What a client posts after training on a version (``plada-client agent`` does it by itself)."""

    client_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")
    student_arch: str = Field(min_length=1, max_length=100)
    epochs: int = Field(ge=0, le=100_000)
    accuracy: float | None = Field(None, ge=0.0, le=1.0, description="on the client's own test split, if any")
    n_test: int | None = Field(None, ge=1, le=2**31 - 1)
    wall_s: float = Field(ge=0.0, le=1e7)
    extra: dict[str, Any] = Field(default_factory=dict, description="free-form, at most 4 KB as JSON")
    coverage: ReportCoverage | None = Field(
        None, description="an attached pool copy: how many of the payload's items it held (None: an identical pool)"
    )

    @field_validator("extra")
    @classmethod
    def _small(cls, v: dict[str, Any]) -> dict[str, Any]:
        import json

        if len(json.dumps(v, default=str)) > 4096:
            raise ValueError("extra must be at most 4 KB as JSON")
        return v


class ReportInfo(ReportIn):
    id: int
    task: str
    version: int
    created_at: datetime


class ReportsPublic(BaseModel):
    data: list[ReportInfo]
    count: int = Field(description="reports on this page")
    next: str | None = Field(None, description="URL of the next page, if there is one")


class ReportSummary(BaseModel):
    count: int
    with_accuracy: int
    mean_accuracy: float | None = None


class VersionInfo(BaseModel):
    task: str
    version: int
    status: VersionStatus
    sha256: str | None = None
    signature: str | None = Field(None, description="ed25519:<key id>:<base64url> over the payload's sha256")
    size_bytes: int | None = None
    n_items: int | None = None
    created_at: datetime
    metrics: dict[str, Any] = Field(default_factory=dict)
    payload_url: str | None = None
    reports: ReportSummary | None = None


class JobsPublic(BaseModel):
    data: list[JobInfo]
    count: int


class VersionsPublic(BaseModel):
    data: list[VersionInfo]
    count: int


class TaskInfo(BaseModel):
    name: str
    access: Literal["public", "token"] = "public"
    classes: list[str]
    pool_id: str
    pool_name: str
    latest_version: int | None = None
    created_at: datetime
    updated_at: datetime


class TaskEvent(BaseModel):
    at: datetime
    actor: str
    action: Literal["created", "published", "access", "owner"]
    detail: dict[str, Any] = Field(default_factory=dict)


class TaskHistory(BaseModel):
    task: str
    owner: str | None = None
    data: list[TaskEvent]
    count: int


class TasksPublic(BaseModel):
    data: list[TaskInfo]
    count: int


class PublishResponse(BaseModel):
    task: str
    version: int
    job: JobInfo
    links: dict[str, str]


class PoolInfo(BaseModel):
    name: str
    pool_id: str
    n_items: int
    kind: str
    image_shape: list[int]


class PoolsPublic(BaseModel):
    data: list[PoolInfo]
    count: int


class Problem(BaseModel):
    """RFC 9457 problem details, plus plada's stable ``code``."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    errors: list[dict[str, Any]] | None = None


class SigningKeyInfo(BaseModel):
    algorithm: Literal["ed25519"]
    public_key: str = Field(description="pin this: plada-client --trust KEY, or PLADA_TRUST=KEY")
    key_id: str


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    database: Literal["ok"]
