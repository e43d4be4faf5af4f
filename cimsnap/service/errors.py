"""containerd error kinds <-> gRPC status codes (containerd errdefs ToGRPC/FromGRPC, facts only).

A server error's status message is its text ending with ``: <kind>`` like Go's wrapped errdefs
errors ("snapshot does not exist: not found"); containerd's client strips that suffix again.
"""

from __future__ import annotations

import grpc

from cimsnap.errors import (
    KIND_ALREADY_EXISTS,
    KIND_FAILED_PRECONDITION,
    KIND_INVALID_ARGUMENT,
    KIND_NOT_FOUND,
    KIND_NOT_IMPLEMENTED,
    KIND_UNAVAILABLE,
    KIND_UNKNOWN,
    AlreadyExistsError,
    CimsnapError,
    FailedPreconditionError,
    NotFoundError,
    UsageError,
)

KIND_TO_CODE: dict[str, grpc.StatusCode] = {
    KIND_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    KIND_ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    KIND_FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    KIND_INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    KIND_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    KIND_NOT_IMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    KIND_UNKNOWN: grpc.StatusCode.UNKNOWN,
}
CODE_TO_KIND = {code: kind for kind, code in KIND_TO_CODE.items()}


def to_status(err: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a server returns for ``err``."""
    if isinstance(err, CimsnapError):
        kind = err.kind if err.kind in KIND_TO_CODE else KIND_UNKNOWN
        text = str(err)
    elif isinstance(err, OSError):
        kind = KIND_UNKNOWN
        text = f"{err.filename}: {err.strerror}" if err.filename else str(err)
    else:
        kind = KIND_UNKNOWN
        text = f"internal error: {err.__class__.__name__}: {err}"
    text = " ".join(text.splitlines())
    if kind != KIND_UNKNOWN and not text.endswith(": " + kind):
        text = f"{text}: {kind}"
    return KIND_TO_CODE[kind], text


_KIND_CLASSES: dict[str, type[CimsnapError]] = {
    KIND_NOT_FOUND: NotFoundError,
    KIND_ALREADY_EXISTS: AlreadyExistsError,
    KIND_FAILED_PRECONDITION: FailedPreconditionError,
    KIND_INVALID_ARGUMENT: UsageError,
}


def from_rpc_error(err: grpc.RpcError) -> CimsnapError:
    """A client-side CimsnapError of the matching kind for a failed call."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or str(code)
    kind = CODE_TO_KIND.get(code, KIND_UNKNOWN)
    if code == grpc.StatusCode.UNAVAILABLE:
        details = f"snapshotter unavailable: {details}"
    cls = _KIND_CLASSES.get(kind, CimsnapError)
    message = details.removesuffix(": " + kind) if kind != KIND_UNKNOWN else details
    return cls(message, kind=kind)
