"""What each attack of issue 13 costs the service: status, time to the answer, memory, liveness.

Full-size payloads: a 1 MB gzip body expanding to 1 GiB, an 875 KB PNG of 30000x30000, 300
idle and 50 slowloris connections. For each runtime it prints one line per attack: the
outcome, the time until the answer, the server's peak memory over its level before (its
own process, /proc), and the slowest liveness answer while the attack ran (REST, and gRPC on
MLServer).

Run: ``.venv/bin/python benchmarks/bench_attacks.py [--runtime both] [--src OTHER/src]``
(``--src`` measures another checkout, e.g. the code before the guard; it needs a few GB).
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
import socket
import sys
import threading
import time
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'test'))

from attack_kit import (gzip_bomb, http, measure, png_bomb, raw_exchange,  # noqa: E402
                        ServedProcess, statuses, TOKEN)
import cv2  # noqa: E402
import numpy as np  # noqa: E402


def _infer(image: bytes) -> bytes:
    return json.dumps({'inputs': [{'name': 'image', 'datatype': 'BYTES', 'shape': [1],
                                   'data': [base64.b64encode(image).decode()]}]}).encode()


def _jpeg() -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8)
    return cv2.imencode('.jpg', image)[1].tobytes()


def _grpc_live(srv: ServedProcess) -> Callable[[], Any]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f'127.0.0.1:{srv.grpc}')
    return lambda: client.is_server_live(client_timeout=30)


def _status(*args: Any, **kwargs: Any) -> Any:
    """Return the status of one request, or how its connection failed."""
    try:
        return http(*args, **kwargs)[0]
    except OSError as err:  # e.g. an old server answering 401 and closing mid-upload
        return f'{type(getattr(err, "reason", err)).__name__}'


def _row(name: str, cost: Any, note: str = '') -> None:
    print(f'  {name:<28} {str(cost.outcome)[:38]:<38} {cost.seconds * 1e3:9.0f} ms '
          f'{cost.growth_mb:8.0f} MB {cost.live_worst_ms:8.0f} ms'
          f'{" (" + str(cost.live_failures) + " failed)" if cost.live_failures else ""} {note}')


def _slow_clients(srv: ServedProcess) -> str:
    """Hold 300 idle and 50 slowloris connections, serve a request, see if they are let go."""
    idle = [socket.create_connection(('127.0.0.1', srv.rest)) for _ in range(300)]
    slow = [socket.create_connection(('127.0.0.1', srv.rest)) for _ in range(50)]
    for sock in slow:
        sock.sendall(b'POST /v2/models/rcnn/infer HTTP/1.1\r\nX-Pad: ')
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(1.0):
            for sock in slow:
                try:
                    sock.sendall(b'a')
                except OSError:
                    pass

    threading.Thread(target=trickle, daemon=True).start()
    try:
        start = time.perf_counter()
        code, _ = http('POST', f'{srv.url}/v2/models/rcnn/infer', _infer(_jpeg()), TOKEN,
                       {'Content-Type': 'application/json'}, timeout_s=60)
        served_ms = (time.perf_counter() - start) * 1e3
        time.sleep(15)
        open_now = 0
        for sock in idle + slow:
            sock.setblocking(False)
            try:
                sock.recv(1 << 16)  # b'' (closed) or a 408: the server let it go
            except BlockingIOError:
                open_now += 1  # nothing received, not closed: still held by the server
            except OSError:
                pass  # reset: let go
        return f'request {code} in {served_ms:.0f} ms; {open_now}/350 still open after 15 s'
    finally:
        stop.set()
        for sock in idle + slow:
            sock.close()


def attack(runtime: str, src: Path | None) -> None:
    """Run every attack against one runtime and print its figures."""
    srv = ServedProcess(runtime, src=src)
    live = None
    try:
        print(f'{runtime} ({srv.proc.pid}): {"attack":<28} {"outcome":<38} {"answer":>12} '
              f'{"memory":>11} {"liveness":>11}')
        infer = f'{srv.url}/v2/models/rcnn/infer'
        _row('a normal request (baseline)', measure(srv, lambda: http(
             'POST', infer, _infer(_jpeg()), TOKEN, {'Content-Type': 'application/json'})[0]))
        bomb = gzip_bomb(1 << 30)
        gzip = {'Content-Encoding': 'gzip', 'Content-Type': 'application/json'}
        for token in (None, TOKEN):
            cost = measure(srv, lambda: _status('POST', infer, bomb, token, gzip))
            _row(f'gzip 1 MB -> 1 GiB, {"token" if token else "no token"}', cost,
                 f'({len(bomb) >> 10} KiB)')
        png = png_bomb(30000, 30000)
        body = _infer(png)
        _row('PNG 30000x30000, REST', measure(srv, lambda: _status(
             'POST', infer, body, TOKEN, {'Content-Type': 'application/json'})),
             f'({len(png) >> 10} KiB)')
        if runtime == 'mlserver':
            live = _grpc_live(srv)
            import tritonclient.grpc as grpcclient

            client = grpcclient.InferenceServerClient(f'127.0.0.1:{srv.grpc}')
            tensor = grpcclient.InferInput('image', [1], 'BYTES')
            tensor.set_data_from_numpy(np.array([png], dtype=object))

            def grpc_png() -> str:
                try:
                    client.infer('rcnn', [tensor], headers={'authorization': f'Bearer {TOKEN}'})
                except Exception as err:  # the outcome printed
                    status = getattr(err, 'status', None)
                    return str(status() if callable(status) else err)
                return 'served'

            _row('PNG 30000x30000, gRPC', measure(srv, grpc_png, live), '(gRPC liveness)')
            _row('gzip bomb, gRPC liveness',
                 measure(srv, lambda: _status('POST', infer, bomb, None, gzip), live))
        head = b'POST /v2/models/rcnn/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ' + \
            TOKEN.encode() + b'\r\n'
        for name, data in (('Content-Length: -1', head + b'Content-Length: -1\r\n\r\n{'),
                           ('Content-Length: abc', head + b'Content-Length: abc\r\n\r\n{'),
                           ('TE.CL smuggled GET', head + b'Transfer-Encoding: chunked\r\n'
                            b'Content-Length: 5\r\n\r\n0\r\n\r\nGET /v2/health/live HTTP/1.1'
                            b'\r\nHost: x\r\n\r\n')):
            _row(name, measure(srv, lambda: statuses(raw_exchange(srv.rest, data, 10)[0])),
                 '(responses; [] = none in 10 s)')

        def burst() -> str:
            failed = []

            def one() -> None:
                try:
                    http('GET', f'{srv.url}/v2/health/live', timeout_s=10)
                except OSError as err:
                    failed.append(type(err).__name__)
            threads = [threading.Thread(target=one) for _ in range(64)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return f'{64 - len(failed)}/64 ok {sorted(set(failed))}'

        _row('64 clients at once', measure(srv, burst))
        _row('300 idle + 50 slowloris', measure(srv, lambda: _slow_clients(srv)))
        unload = f'{srv.url}/v2/repository/models/rcnn/unload'

        def unload_then_serve() -> str:
            code = http('POST', unload)[0]
            ready = http('GET', f'{srv.url}/v2/health/ready')[0]
            served = http('POST', infer, _infer(_jpeg()), TOKEN,
                          {'Content-Type': 'application/json'})[0]
            return f'unload {code}, ready {ready}, infer {served}'

        _row('unload without token', measure(srv, unload_then_serve))
        print(f'  log: {srv.log_text().count("Traceback")} tracebacks, '
              f'{srv.log_text().count("rejected ")} refusal lines')
    finally:
        srv.stop()


def main() -> None:
    """Measure the runtimes chosen on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runtime', choices=('builtin', 'mlserver', 'both'), default='both')
    parser.add_argument('--src', type=Path, help='source tree to measure (default: this one)')
    args = parser.parse_args()
    for runtime in (('builtin', 'mlserver') if args.runtime == 'both' else (args.runtime,)):
        attack(runtime, args.src)


if __name__ == '__main__':
    main()
