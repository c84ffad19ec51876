"""One exception tree for all of plada.

Every error that crosses a boundary (HTTP, CLI, worker job record) is a ``PladaError``. Each class carries a
stable machine ``code`` and the HTTP ``status`` the API answers with, so one handler maps them all and the CLI
prints one line. Misuse by a caller (wrong argument types, impossible options) stays ``ValueError`` /
``TypeError``; bad *data* (a corrupt payload, a wrong pool) is a ``PladaError``.

    PladaError                           plada_error            500
    ├── PayloadError                     payload_invalid        422
    │   ├── PayloadCorruptError          payload_corrupt        422
    │   ├── PayloadNeedsPoolError        payload_needs_pool     422
    │   └── PayloadVersionError          payload_unsupported    422
    ├── PoolError                        pool_invalid           422
    │   ├── PoolMismatchError            pool_mismatch          409
    │   ├── PoolSourceMissingError       pool_source_missing    500
    │   ├── DefinitionError              definition_invalid     422
    │   └── CoverageError                coverage_too_low       409
    ├── InvalidSpecError                 invalid_spec           422
    ├── InvalidDataError                 invalid_data           422
    │   ├── DecompressionBombError       decompression_bomb     413
    │   └── UnsafeArchivePathError       unsafe_archive_path    422
    ├── TaskConflictError                task_conflict          409
    ├── PayloadTooLargeError             payload_too_large      413
    ├── UploadTimeoutError               upload_timeout         408
    ├── NotFoundError                    not_found              404
    │   ├── UnknownPoolError             unknown_pool           404
    │   ├── LayoutNotFoundError          layout_not_found       404
    │   ├── TaskNotFoundError            task_not_found         404
    │   ├── VersionNotFoundError         version_not_found      404
    │   └── JobNotFoundError             job_not_found          404
    ├── VersionNotReadyError             version_not_ready      409
    ├── UnauthorizedError                unauthorized           401
    ├── ForbiddenError                   forbidden              403
    ├── RateLimitedError                 rate_limited           429
    ├── JobFinishedError                 job_finished           409
    ├── JobCancelledError                job_cancelled          500
    ├── PipelineError                    pipeline_failed        500
    └── ClientError                      client_error           -
        ├── ServerUnavailableError       server_unavailable     -
        ├── ServerResponseError          server_error           -
        ├── OfflineError                 offline_cache_miss     -
        ├── InputFileError               file_not_found         -
        └── VerificationError            verification_failed    -
            └── SignatureError           signature_invalid      -
"""

from __future__ import annotations

from typing import Any, ClassVar


class PladaError(Exception):
    """Base of every plada error; ``code`` is stable and documented, ``message`` is one line."""

    code: ClassVar[str] = "plada_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def __str__(self) -> str:
        return self.message


class PayloadError(PladaError):
    code = "payload_invalid"
    status = 422
    title = "Invalid payload"


class PayloadCorruptError(PayloadError):
    code = "payload_corrupt"
    title = "Corrupt payload"


class PayloadNeedsPoolError(PayloadError):
    code = "payload_needs_pool"
    title = "Payload can only be decoded with its pool"


class PayloadVersionError(PayloadError):
    code = "payload_unsupported"
    title = "Unsupported payload format"


class PoolError(PladaError):
    code = "pool_invalid"
    status = 422
    title = "Invalid pool"


class PoolMismatchError(PoolError):
    code = "pool_mismatch"
    status = 409
    title = "Payload does not belong to this pool"


class PoolSourceMissingError(PoolError):
    code = "pool_source_missing"
    status = 500
    title = "A source of the pool is missing"


class DefinitionError(PoolError):
    """A pool definition that is malformed, oversized, unsafe (a key that would leave the copy's folder) or
    does not hash to the pool it names."""

    code = "definition_invalid"
    status = 422
    title = "Invalid pool definition"


class CoverageError(PoolError):
    """A client's copy holds too few of a payload's items (missing, or other pictures under the same keys)."""

    code = "coverage_too_low"
    status = 409
    title = "The local pool copy holds too few of the payload's items"


class InvalidSpecError(PladaError):
    code = "invalid_spec"
    status = 422
    title = "Invalid task spec"


class InvalidDataError(PladaError):
    code = "invalid_data"
    status = 422
    title = "Invalid target data"


class DecompressionBombError(InvalidDataError):
    """The upload is small but would inflate past a limit (archive bytes, ratio, image pixels)."""

    code = "decompression_bomb"
    status = 413
    title = "Upload inflates beyond the limits"


class UnsafeArchivePathError(InvalidDataError):
    """A zip member name that could escape a folder if anyone ever extracted it."""

    code = "unsafe_archive_path"
    title = "Unsafe path in archive"


class TaskConflictError(PladaError):
    """A task name is taken by a task with other classes: a second publisher must not redefine it silently."""

    code = "task_conflict"
    status = 409
    title = "Task name already in use"


class PayloadTooLargeError(PladaError):
    code = "payload_too_large"
    status = 413
    title = "Upload too large"


class UploadTimeoutError(PladaError):
    """A publish whose body did not arrive within ``PLADA_UPLOAD_DEADLINE_S``."""

    code = "upload_timeout"
    status = 408
    title = "The upload took too long"


class NotFoundError(PladaError):
    code = "not_found"
    status = 404
    title = "Not found"


class UnknownPoolError(NotFoundError):
    code = "unknown_pool"
    title = "Unknown pool"


class LayoutNotFoundError(NotFoundError):
    code = "layout_not_found"
    title = "Pool has no coding layout"


class TaskNotFoundError(NotFoundError):
    code = "task_not_found"
    title = "Task not found"


class VersionNotFoundError(NotFoundError):
    code = "version_not_found"
    title = "Version not found"


class JobNotFoundError(NotFoundError):
    code = "job_not_found"
    title = "Job not found"


class VersionNotReadyError(PladaError):
    code = "version_not_ready"
    status = 409
    title = "Version not ready"


class UnauthorizedError(PladaError):
    code = "unauthorized"
    status = 401
    title = "Authentication required"


class ForbiddenError(PladaError):
    code = "forbidden"
    status = 403
    title = "Not allowed"


class RateLimitedError(PladaError):
    code = "rate_limited"
    status = 429
    title = "Too many requests"


class JobFinishedError(PladaError):
    """A job that already ended (succeeded, failed or cancelled) cannot be cancelled."""

    code = "job_finished"
    status = 409
    title = "Job already finished"


class JobCancelledError(PladaError):
    """Raised inside a worker at the next progress point of a job that was cancelled (or lost its lease)."""

    code = "job_cancelled"
    title = "Job cancelled"


class PipelineError(PladaError):
    code = "pipeline_failed"
    status = 500
    title = "Pipeline failed"


class ClientError(PladaError):
    code = "client_error"
    title = "Client error"


class ServerUnavailableError(ClientError):
    code = "server_unavailable"
    title = "Server unavailable"


class ServerResponseError(ClientError):
    """The server answered with a problem; ``problem_code`` is the server's stable code."""

    code = "server_error"
    title = "Server answered with an error"

    def __init__(self, message: str, *, http_status: int = 0, problem_code: str = "bad_answer", **extra: Any) -> None:
        """``bad_answer``: the answer itself was broken (malformed, too big, wrong types, unasked encoding)."""
        super().__init__(message, **extra)
        self.http_status = http_status
        self.problem_code = problem_code


class OfflineError(ClientError):
    """``PLADA_OFFLINE=1`` and the cache cannot answer: the client refuses to touch the network."""

    code = "offline_cache_miss"
    title = "Not in the offline cache"


class InputFileError(ClientError):
    """A file named on the command line (``--data``, ``--spec``, ``--eval``) is not there or not readable."""

    code = "file_not_found"
    title = "Input file not found"


class VerificationError(ClientError):
    code = "verification_failed"
    title = "Verification failed"


class SignatureError(VerificationError):
    """A pinned server key and a payload that is unsigned or whose signature does not verify."""

    code = "signature_invalid"
    title = "Signature invalid"


def all_error_classes() -> list[type[PladaError]]:
    """Every class of the tree, so docs and tests can check that each code is documented and unique."""
    out: list[type[PladaError]] = []
    stack: list[type[PladaError]] = [PladaError]
    while stack:
        cls = stack.pop()
        out.append(cls)
        stack.extend(cls.__subclasses__())
    return sorted(out, key=lambda c: c.code)


def error_tree() -> str:
    """The tree drawn in this module's docstring, from the classes themselves (a test keeps the two equal).
    Client-side errors never become HTTP answers: their status column is '-'."""
    lines: list[str] = []

    def walk(cls: type[PladaError], prefix: str, last: bool, root: bool) -> None:
        branch = "" if root else ("└── " if last else "├── ")
        status = "-" if issubclass(cls, ClientError) else str(cls.status)
        lines.append(f"{prefix}{branch}{cls.__name__}".ljust(37) + f"{cls.code}".ljust(23) + status)
        kids = [k for k in cls.__subclasses__() if k.__module__ == __name__]  # definition order, this tree only
        inner = "" if root else prefix + ("    " if last else "│   ")
        for i, kid in enumerate(kids):
            walk(kid, inner, i == len(kids) - 1, False)

    walk(PladaError, "", True, True)
    return "\n".join(lines)
