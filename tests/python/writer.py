"""A bounded write load from plain Python grpcio (a client nobody on the team wrote).

Usage: writer.py PROTO_DIR ADDR TENANT PREFIX STOP_FILE MAX_SECONDS

Writes unique keys PREFIX-0, PREFIX-1, ... (value = key) at QUORUM, one at a time, with no
retry policy of its own (only grpcio's built-in transparent retry of requests a server never
processed), until STOP_FILE exists or MAX_SECONDS pass. Prints one JSON object: the keys
acknowledged and, for each failed request, its key, status code and details.
"""
import json
import os
import sys
import tempfile
import time

import grpc

from client_smoke import generate


def main():
    proto_dir, addr, tenant, prefix, stop_file, max_seconds = sys.argv[1:7]
    deadline = time.monotonic() + float(max_seconds)
    acked, failed = [], []
    with tempfile.TemporaryDirectory() as out:
        pb, rpc = generate(proto_dir, out)
        stub = rpc.CoordinatorServiceStub(grpc.insecure_channel(addr))
        i = 0
        while time.monotonic() < deadline and not os.path.exists(stop_file):
            key = f"{prefix}-{i}"
            i += 1
            try:
                stub.Write(pb.WriteRequest(tenant_id=tenant, key=key.encode(), value=key.encode(),
                                           consistency=2), timeout=10)  # QUORUM
                acked.append(key)
            except grpc.RpcError as e:
                failed.append({"key": key, "code": str(e.code()), "details": e.details()})
            time.sleep(0.002)
    print(json.dumps({"acked": acked, "failed": failed}))


if __name__ == "__main__":
    main()
