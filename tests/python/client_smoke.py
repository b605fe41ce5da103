"""A pairdb client written with plain Python grpcio, from the .proto files alone.

Usage: client_smoke.py PROTO_DIR COORDINATOR_ADDR

Generates stubs with grpc_tools.protoc into a temp dir, then checks, against a running
coordinator with a `default` tenant: write/read round trip, concurrent writes become siblings
and a write with the read context resolves them, delete gives NOT_FOUND with code 1001 in a
google.rpc.ErrorInfo (decoded with grpcio-status), and bad input gets INVALID_KEY.
Exits non-zero with a message on the first failed check.
"""
import importlib
import os
import sys
import tempfile
import uuid

import grpc
from grpc_status import rpc_status
from google.rpc import error_details_pb2
from grpc_tools import protoc


def generate(proto_dir, out):
    files = [os.path.join("pairdb/v1", f) for f in ("types.proto", "storage.proto", "coordinator.proto")]
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out)
    return importlib.import_module("pairdb.v1.coordinator_pb2"), importlib.import_module("pairdb.v1.coordinator_pb2_grpc")


def error_info(err):
    status = rpc_status.from_call(err)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}")


def main():
    proto_dir, addr = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as out:
        pb, rpc = generate(proto_dir, out)
        stub = rpc.CoordinatorServiceStub(grpc.insecure_channel(addr))
        key = f"py-{uuid.uuid4().hex}".encode()

        stub.Write(pb.WriteRequest(tenant_id="default", key=key, value=b"one"))
        r = stub.Read(pb.ReadRequest(tenant_id="default", key=key))
        check(r.value == b"one", "write then read round-trips")

        stub.Write(pb.WriteRequest(tenant_id="default", key=key, value=b"two"))
        r = stub.Read(pb.ReadRequest(tenant_id="default", key=key))
        check(sorted(s.value for s in r.siblings) == [b"one", b"two"], "a write without context becomes a sibling")

        stub.Write(pb.WriteRequest(tenant_id="default", key=key, value=b"three", context=r.context))
        r = stub.Read(pb.ReadRequest(tenant_id="default", key=key))
        check([s.value for s in r.siblings] == [b"three"], "a write with the read context supersedes both")

        stub.Delete(pb.DeleteRequest(tenant_id="default", key=key, context=r.context))
        try:
            stub.Read(pb.ReadRequest(tenant_id="default", key=key))
            sys.exit("FAILED: deleted key was found")
        except grpc.RpcError as e:
            info = error_info(e)
            check(e.code() == grpc.StatusCode.NOT_FOUND, "deleted key reads NOT_FOUND")
            check(info is not None and info.reason == "KEY_NOT_FOUND" and info.metadata["code"] == "1001",
                  "ErrorInfo carries KEY_NOT_FOUND / 1001")

        try:
            stub.Write(pb.WriteRequest(tenant_id="default", key=b"a\x00b", value=b"x"))
            sys.exit("FAILED: key with NUL accepted")
        except grpc.RpcError as e:
            info = error_info(e)
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and info.reason == "INVALID_KEY",
                  "NUL in key is INVALID_KEY")
    print("python grpcio client: all checks passed")


if __name__ == "__main__":
    main()
