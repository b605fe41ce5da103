"""The set-add workload from plain Python grpcio (a client nobody on the team wrote), S03.

Usage: setadd.py PROTO_DIR TENANT PREFIX LEVEL KEYS WORKERS OPS MAX_SECONDS ADDR [ADDR ...]

WORKERS threads each make OPS set-adds (or stop at MAX_SECONDS): read the key at LEVEL
(QUORUM or ONE) through a random coordinator, union the siblings' comma-separated elements,
add a new element and write the union back with the read's context at LEVEL; after each
acknowledged add, read the key again through a random coordinator. Keys are PREFIX-0 ..
PREFIX-(KEYS-1).
No retries of its own. Prints the history as JSON lines in the Rust harness's record format
(`tests/src/nemesis/history.rs`): invoke / ok / fail / info of each add, and each read (the
add's own and the one after the ack, an operation of its own) with the elements it saw.
"""
import json
import random
import sys
import tempfile
import threading
import time

import grpc

from client_smoke import generate

# Refused before anything was written: certainly not applied. Anything else may have been.
NOT_APPLIED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
}


def elements(value):
    return {e for e in value.decode("utf-8", "replace").split(",") if e}


def main():
    proto_dir, tenant, prefix, level, keys, workers, ops, max_seconds = sys.argv[1:9]
    addrs = sys.argv[9:]
    keys, workers, ops = int(keys), int(workers), int(ops)
    consistency = {"ONE": 1, "QUORUM": 2}[level]
    started = time.monotonic_ns()
    deadline = time.monotonic() + float(max_seconds)
    records, lock = [], threading.Lock()

    with tempfile.TemporaryDirectory() as out:
        pb, rpc = generate(proto_dir, out)
        stubs = [rpc.CoordinatorServiceStub(grpc.insecure_channel(a)) for a in addrs]

        def record(proc, op_id, kind, f, key, element="", siblings=0, error="", observed=None):
            r = {"run": "python-setadd", "seed": 0, "proc": proc, "op_id": op_id, "type": kind,
                 "f": f, "key": key, "element": element, "siblings": siblings, "error": error,
                 "t_mono_ns": time.monotonic_ns() - started}
            if observed:
                r["observed"] = sorted(observed)
            with lock:
                records.append(r)

        def read(key):
            try:
                r = random.choice(stubs).Read(
                    pb.ReadRequest(tenant_id=tenant, key=key.encode(), consistency=consistency),
                    timeout=10)
                return set().union(*(elements(s.value) for s in r.siblings)), r.context, len(r.siblings), None
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    return set(), b"", 0, None
                return None, None, 0, f"{e.code()}: {e.details()}"

        def worker(w):
            op = 0
            for i in range(ops):
                if time.monotonic() > deadline:
                    break
                key = f"{prefix}-{(i * 7 + w * 13) % keys}"
                element = f"p{w}e{i}"
                op += 1
                add = op
                record(w, add, "invoke", "add", key, element)
                seen, context, siblings, err = read(key)
                if err is not None:
                    record(w, add, "fail", "add", key, element, error=err)
                    time.sleep(0.1)
                    continue
                record(w, add, "ok", "read", key, observed=seen)
                try:
                    random.choice(stubs).Write(
                        pb.WriteRequest(tenant_id=tenant, key=key.encode(),
                                        value=",".join(sorted(seen | {element})).encode(),
                                        context=context, consistency=consistency),
                        timeout=10)
                except grpc.RpcError as e:
                    kind = "fail" if e.code() in NOT_APPLIED else "info"
                    record(w, add, kind, "add", key, element, siblings, f"{e.code()}: {e.details()}")
                    time.sleep(0.1)
                    continue
                record(w, add, "ok", "add", key, element, siblings)
                # Read your write, through any coordinator, right after the ack.
                op += 1
                record(w, op, "invoke", "get", key)
                seen, _, _, err = read(key)
                if err is None:
                    record(w, op, "ok", "read", key, observed=seen)
                else:
                    record(w, op, "fail", "get", key, error=err)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for r in records:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
