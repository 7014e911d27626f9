"""A real gRPC server and client (the `grpcio` package) for tests/grpc.rs.

Service `ragscope.test.Echo`, messages are raw bytes (generic handlers, no generated code):
  Unary         echoes the request; `fail:CODE:message` aborts with that status
  ServerStream  the request is a count N: answers N messages `m0`..`m{N-1}`
  ClientStream  answers the requests joined with `+`
  Bidi          answers each request with `echo:<request>` as it arrives
Every call that ends OK carries trailing metadata `x-echo-trailer: <method>`, and echoes the
request metadata `x-echo-header` back in it as `x-echo-header-seen`.

  python3 grpc_echo.py server [--tls CERT KEY]       prints `PORT <n>`, serves until killed
  python3 grpc_echo.py client TARGET [--tls CA NAME] runs every call, prints one JSON line
"""

import json
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "ragscope.test.Echo"


def _trailers(context, method):
    seen = dict(context.invocation_metadata()).get("x-echo-header", "")
    context.set_trailing_metadata(
        (("x-echo-trailer", method), ("x-echo-header-seen", seen))
    )


def unary(request, context):
    if request.startswith(b"fail:"):
        _, code, message = request.decode().split(":", 2)
        context.set_trailing_metadata((("x-echo-trailer", "failed"),))
        context.abort(grpc.StatusCode[code], message)
    _trailers(context, "Unary")
    return request


def server_stream(request, context):
    for i in range(int(request.decode())):
        yield b"m%d" % i
    _trailers(context, "ServerStream")


def client_stream(requests, context):
    joined = b"+".join(requests)
    _trailers(context, "ClientStream")
    return joined


def bidi(requests, context):
    for request in requests:
        yield b"echo:" + request
    _trailers(context, "Bidi")


def serve(args):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    if args[:1] == ["--tls"]:
        with open(args[1], "rb") as cert, open(args[2], "rb") as key:
            creds = grpc.ssl_server_credentials(((key.read(), cert.read()),))
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("PORT %d" % port, flush=True)
    threading.Event().wait()


def outcome(call_or_error):
    """Code, details and trailing metadata of a finished call (or its RpcError)."""
    return {
        "code": call_or_error.code().name,
        "details": call_or_error.details(),
        "trailers": dict(call_or_error.trailing_metadata() or ()),
    }


def run_client(args):
    target = args[0]
    if args[1:2] == ["--tls"]:
        with open(args[2], "rb") as ca:
            creds = grpc.ssl_channel_credentials(root_certificates=ca.read())
        channel = grpc.secure_channel(
            target, creds, options=(("grpc.ssl_target_name_override", args[3]),)
        )
    else:
        channel = grpc.insecure_channel(target)
    md = (("x-echo-header", "hello"),)
    out = {}

    unary_call = channel.unary_unary("/%s/Unary" % SERVICE)
    answer, call = unary_call.with_call(b"ping", metadata=md, timeout=10)
    out["unary"] = dict(outcome(call), answer=answer.decode())

    try:
        unary_call(b"fail:NOT_FOUND:no such document", timeout=10)
        out["unary_error"] = {"code": "OK"}
    except grpc.RpcError as e:
        out["unary_error"] = outcome(e)

    stream = channel.unary_stream("/%s/ServerStream" % SERVICE)(b"3", metadata=md, timeout=10)
    answers = [m.decode() for m in stream]
    out["server_stream"] = dict(outcome(stream), answers=answers)

    joined, call = channel.stream_unary("/%s/ClientStream" % SERVICE).with_call(
        iter([b"a", b"b", b"c"]), metadata=md, timeout=10
    )
    out["client_stream"] = dict(outcome(call), answer=joined.decode())

    # Full duplex: each request is sent only after the answer to the previous one arrived,
    # so the call fails (times out) unless both directions stream at once.
    replies = []
    turn = threading.Semaphore(1)

    def requests():
        for word in ("x", "y", "z"):
            turn.acquire()
            yield word.encode()

    bidi = channel.stream_stream("/%s/Bidi" % SERVICE)(requests(), metadata=md, timeout=10)
    for reply in bidi:
        replies.append(reply.decode())
        turn.release()
    out["bidi"] = dict(outcome(bidi), answers=replies)

    try:
        channel.unary_unary("/ragscope.test.Missing/Nothing")(b"", timeout=10)
        out["unimplemented"] = {"code": "OK"}
    except grpc.RpcError as e:
        out["unimplemented"] = outcome(e)
    print(json.dumps(out), flush=True)


def run_unary(args):
    """One unary call; prints its outcome (for errors the proxy answers itself)."""
    channel = grpc.insecure_channel(args[0])
    try:
        answer, call = channel.unary_unary("/%s/Unary" % SERVICE).with_call(b"ping", timeout=10)
        print(json.dumps(dict(outcome(call), answer=answer.decode())), flush=True)
    except grpc.RpcError as e:
        print(json.dumps(outcome(e)), flush=True)


if __name__ == "__main__":
    {"server": serve, "client": run_client, "unary": run_unary}[sys.argv[1]](sys.argv[2:])
