#!/usr/bin/env python3
"""A bounded random fuzzer for vaultd's HTTPS API, against a real vaultd on loopback.

Run by Tests/EndToEndTests/APIFuzzTests.swift (standard library only). For --duration seconds a few worker threads
send random traffic: the route shapes of /v1/openapi.json, half of them valid (the role the route's description
names, ids the fuzzer knows exist, a body its schema accepts) with at most one mutation, half random in every part
(mutated and malformed ids: bad force ids and ULIDs, path traversal, percent-encoding, long segments, unicode; bad
Authorization, Range, Content-Type and X-Vault-Read-Request; huge and duplicate headers; bad, wrongly typed, huge and
truncated JSON); uploads complete, chunked, cut off, stalled below their Content-Length, half-closed, closed with a
clean TLS close inside the body, with broken chunk framing, and a sealed file truncated, altered or cut; reads with
ranges; the dual-control retrieval of an archive; several requests on one connection, pipelined or not; malformed
HTTP and TLS. Beside them: a bounded number of slowloris connections (one more header byte a second), bursts of
concurrent connections, and a monitor. The real principals' tokens are used for a share of the requests, and a
principal of another force. Everything goes to the one loopback address given, every socket has a deadline, and the
run ends by itself (a watchdog ends it in any case).

It asserts:
  - vaultd stays up: its process is alive and /healthz answers within --health-timeout, during and after the run;
  - every 4xx/5xx answer is `{"error":{"code":"...","message":"..."}}` with Content-Type application/json;
  - no 5xx at all, neither seen by the fuzzer nor counted by vaultd's own metrics (no fault is injected), and no
    well-formed request goes unanswered;
  - no token the fuzzer sends comes back in an answer (head or body);
  - the known extract (--known-file, uploaded before the run) stays the current one of its dataset and reads back
    byte for byte, during and after the run; no upload the fuzzer cut off or broke is ever listed or read; every
    upload it completed (201) is current, archived or shredded by a request of its own, and every read of one
    (whole, ranged, through a retrieval) returns the bytes sent.

Tokens are read from files (--token NAME=FILE), never from the command line, and are redacted from every line
printed. A run prints its seed (--seed replays the same sequence of requests per worker; their interleaving depends
on timing), counts per status code and outcome, and a one-line verdict; it exits 1 on any violated assertion (each
printed with the request that caused it), 2 on a usage or setup error.
"""

import argparse
import collections
import hashlib
import json
import os
import random
import re
import select
import socket
import ssl
import string
import sys
import threading
import time
import urllib.parse
import warnings

ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Roles the fuzzer knows by name (--token NAME=FILE); any other name is a principal it only uses at random.
ROLE_NAMES = ("uploader", "analyst", "custodian", "ops", "dpo")


class SetupError(Exception):
    pass


class Closed(Exception):
    """The connection closed (or was reset) before a complete answer."""


class Timeout(Exception):
    """No complete answer within the request's deadline."""


class BadResponse(Exception):
    """The bytes vaultd sent are not an HTTP/1.1 answer."""


# ---------------------------------------------------------------------------------------------------------------
# Requests and answers


class Request:
    """One request as the fuzzer sends it. `framing` says how it is sent: "full" (head and body, then read the
    answer), "cut" (close after `cut_at` bytes of the body), "stall" (send `cut_at` bytes, wait `stall` seconds,
    read whatever comes, close), "halfclose" (send `cut_at` bytes, shut the write side, read). `wellformed` is
    false when the fuzzer knows the bytes are not valid HTTP/1.1 (vaultd may then close without answering)."""

    def __init__(self, method, target, headers=None, body=b"", category="route", principal="none"):
        self.method = method
        self.target = target
        self.headers = list(headers or [])
        self.body = body
        self.chunked = None  # list of raw chunk byte strings (already framed) when sent chunked
        self.category = category
        self.principal = principal
        self.framing = "full"
        self.cut_at = None
        self.stall = 0.0
        self.wellformed = True
        self.raw = None  # the complete bytes to send, for protocol-level garbage
        self.cert = None  # None, "client", "foreign"
        self.note = ""
        self.upload = None  # (force, dataset, body bytes) when a 201 must be remembered
        self.route = None  # the OpenAPI route pattern, when from a route shape
        self.secrets = []  # what this request sends that must never come back
        self.consumes_body = False  # the route reads the body before it answers (an upload, a JSON body)

    def header(self, name):
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def head_bytes(self):
        lines = ["%s %s HTTP/1.1" % (self.method, self.target)]
        for key, value in self.headers:
            lines.append("%s: %s" % (key, value))
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n"

    def wire(self):
        """The bytes of the request, and where its body starts."""
        if self.raw is not None:
            return self.raw, len(self.raw)
        head = self.head_bytes()
        body = b"".join(self.chunked) if self.chunked is not None else self.body
        return head + body, len(head)


class Response:
    def __init__(self, status, reason, headers, body, complete=True):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (lower-case name, value)
        self.body = body
        self.complete = complete

    def header(self, name):
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Reader:
    """Buffered reads from a socket against a deadline."""

    def __init__(self, sock, deadline):
        self.sock = sock
        self.deadline = deadline
        self.buffer = bytearray()

    def _fill(self):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout("no complete answer in time")
        self.sock.settimeout(min(remaining, 5.0))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            if time.monotonic() >= self.deadline:
                raise Timeout("no complete answer in time")
            return
        except ssl.SSLError as error:
            raise Closed("TLS: %s" % error.__class__.__name__)
        except (ConnectionError, OSError) as error:
            raise Closed(error.__class__.__name__)
        if not data:
            raise Closed("closed")
        self.buffer += data

    def until(self, marker, limit):
        while True:
            index = self.buffer.find(marker)
            if index >= 0:
                data = bytes(self.buffer[: index + len(marker)])
                del self.buffer[: index + len(marker)]
                return data
            if len(self.buffer) > limit:
                raise BadResponse("no %r within %d bytes" % (marker, limit))
            self._fill()

    def exact(self, count):
        while len(self.buffer) < count:
            self._fill()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def rest(self, limit):
        try:
            while len(self.buffer) <= limit:
                self._fill()
        except Closed:
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


def read_response(reader, method, max_body):
    while True:
        try:
            head = reader.until(b"\r\n\r\n", 256 * 1024)
        except Closed:
            if reader.buffer:
                raise BadResponse("the connection closed inside an answer's head")
            raise
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise BadResponse("status line %r" % lines[0][:80])
        status = int(parts[1])
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadResponse("header line %r" % line[:80])
            headers.append((name.strip().lower(), value.strip()))
        if 100 <= status < 200 and status != 101:
            continue  # an interim answer (100 Continue): the final one follows
        break
    response = Response(status, parts[2] if len(parts) > 2 else "", headers, b"")
    if method == "HEAD" or status in (204, 304):
        return response
    encoding = ",".join(v for k, v in headers if k == "transfer-encoding").lower()
    lengths = [v for k, v in headers if k == "content-length"]
    try:
        if "chunked" in encoding:
            body = bytearray()
            while True:
                size_line = reader.until(b"\r\n", 4096)
                size = int(size_line.split(b";")[0].strip() or b"x", 16)
                if size == 0:
                    reader.until(b"\r\n", 64 * 1024)  # trailers, if any, end with an empty line
                    break
                if len(body) + size > max_body:
                    raise BadResponse("body over %d bytes" % max_body)
                body += reader.exact(size)
                reader.exact(2)
            response.body = bytes(body)
        elif lengths:
            if len(set(lengths)) != 1 or not lengths[0].isdigit():
                raise BadResponse("Content-Length %r" % lengths)
            length = int(lengths[0])
            if length > max_body:
                raise BadResponse("Content-Length %d over %d" % (length, max_body))
            response.body = reader.exact(length)
        else:
            response.body = reader.rest(max_body)
    except Closed:
        # A streamed answer cut short (vaultd aborts a read whose chunk fails to authenticate, or whose use case
        # stops allowing it): keep what came, marked incomplete.
        response.body = bytes(reader.buffer)
        response.complete = False
    return response


# ---------------------------------------------------------------------------------------------------------------
# The fuzzer


class Fuzzer:
    def __init__(self, args):
        self.args = args
        parsed = urllib.parse.urlsplit(args.addr)
        if parsed.scheme != "https" or not parsed.hostname or not parsed.port:
            raise SetupError("--addr must be https://HOST:PORT")
        if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SetupError("the fuzzer only talks to loopback, not %s" % parsed.hostname)
        self.host = parsed.hostname
        self.port = parsed.port
        self.seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**32)
        self.tokens = {}
        for item in args.token:
            name, sep, path = item.partition("=")
            if not sep:
                raise SetupError("--token takes NAME=FILE")
            try:
                with open(path, "r", encoding="utf-8") as handle:
                    self.tokens[name] = handle.read().strip()
            except OSError as error:
                raise SetupError("cannot read the token file of %s: %s" % (name, error.strerror))
            if not self.tokens[name]:
                raise SetupError("the token file of %s is empty" % name)
        for role in ROLE_NAMES:
            if role not in self.tokens:
                raise SetupError("--token %s=FILE is required" % role)
        self.principal_ids = dict(item.partition("=")[::2] for item in args.principal_id)
        self.secrets = sorted(set(self.tokens.values()), key=len, reverse=True)
        with open(args.known_file, "rb") as handle:
            self.known = handle.read()
        self.sealed = None
        if args.sealed_file:
            with open(args.sealed_file, "rb") as handle:
                self.sealed = handle.read()
        self.force = args.force
        self.other_force = args.other_force
        self.dataset = args.dataset
        self.use_case = args.use_case
        self.fuzz_datasets = [d for d in args.fuzz_datasets.split(",") if d]

        self.context = ssl.create_default_context(cafile=args.ca_file)
        self.client_context = None
        if args.client_cert:
            self.client_context = ssl.create_default_context(cafile=args.ca_file)
            self.client_context.load_cert_chain(args.client_cert, args.client_key)
        self.foreign_context = None
        if args.foreign_cert:
            self.foreign_context = ssl.create_default_context(cafile=args.ca_file)
            self.foreign_context.load_cert_chain(args.foreign_cert, args.foreign_key)

        self.lock = threading.Lock()
        self.status_counts = collections.Counter()
        self.outcomes = collections.Counter()
        self.categories = collections.Counter()
        self.routes = collections.Counter()
        self.routes_ok = collections.Counter()  # route shapes answered 2xx: the authenticated paths reached
        self.violations = []
        self.sent = 0
        self.upload_bytes = 0
        self.known_id = None
        self.completed = {}  # extract id -> (dataset, sha256, bytes)
        self.completed_by_dataset = collections.defaultdict(set)
        self.shredded = set()
        self.retrievals = []
        self.certificates = []
        self.pending_reads = []  # reads of extracts not (yet) known to the fuzzer when they came back
        self.cut_datasets = set()  # own-force datasets that saw uploads the fuzzer cut off or broke
        self.rotations = 0
        self.health = []  # (monotonic time, seconds or None)
        self.known_reads = 0
        self.slowloris = collections.Counter()
        self.server_statuses = collections.Counter()
        self.start = None
        self.deadline = None
        self.stop = threading.Event()

    # -- bookkeeping -------------------------------------------------------------------------------------------

    def redact(self, text):
        if isinstance(text, bytes):
            text = text.decode("utf-8", "backslashreplace")
        for name, token in self.tokens.items():
            text = text.replace(token, "<%s token>" % name)
        # Mutations of a token (cut, extended, re-cased) and anything else token-shaped.
        text = re.sub(r"vt_[0-9A-Za-z]{4,}", "vt_<redacted>", text)
        text = re.sub(r"[0-9a-fA-F]{24,}", "<hex redacted>", text)
        return text

    def describe(self, request):
        if request.raw is not None:
            shown = request.raw[:400]
            return self.redact("[%s, %s] raw bytes %r%s" % (request.category, request.principal, shown,
                                                            "..." if len(request.raw) > 400 else ""))
        headers = []
        for key, value in request.headers:
            shown = value if len(value) <= 160 else value[:160] + "...(%d chars)" % len(value)
            headers.append("%s: %s" % (key, shown))
        if request.chunked is not None:
            body = "chunked %d chunks, %d bytes on the wire" % (len(request.chunked), sum(map(len, request.chunked)))
        elif request.body:
            body = "%d bytes %r%s" % (len(request.body), request.body[:200], "..." if len(request.body) > 200 else "")
        else:
            body = "no body"
        target = request.target if len(request.target) <= 300 else request.target[:300] + "...(%d chars)" % len(
            request.target)
        framing = request.framing
        if request.cut_at is not None:
            framing += " after %d body bytes" % request.cut_at
        if request.stall:
            framing += ", stalled %.1fs" % request.stall
        text = "[%s as %s%s] %s %s HTTP/1.1 | %s | body: %s | framing: %s%s" % (
            request.category, request.principal, ", cert " + request.cert if request.cert else "", request.method,
            target, "; ".join(headers), body, framing, " | " + request.note if request.note else "")
        return self.redact(text)

    def violate(self, kind, request, detail):
        with self.lock:
            self.violations.append((kind, self.describe(request) if request is not None else "-",
                                    self.redact(detail)))
            count = len(self.violations)
        if count <= 3:
            print("VIOLATION %s: %s\n  request: %s" % (kind, self.redact(detail),
                                                      self.describe(request) if request else "-"), flush=True)

    def count(self, key):
        with self.lock:
            self.outcomes[key] += 1

    # -- connections -------------------------------------------------------------------------------------------

    def connect(self, cert=None, timeout=10.0):
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = self.context
        if cert == "client" and self.client_context:
            context = self.client_context
        elif cert == "foreign" and self.foreign_context:
            context = self.foreign_context
        try:
            return context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise

    def send(self, request, timeout=20.0, max_body=64 << 20):
        """Sends one request as its framing says and checks the answer. Returns the Response or None."""
        with self.lock:
            self.sent += 1
            self.categories[request.category] += 1
            if request.route:
                self.routes[request.route] += 1
        try:
            sock = self.connect(request.cert)
        except ssl.SSLError:
            # A client certificate from another CA: the handshake fails, as it must; nothing else may.
            self.count("tls handshake refused")
            if request.cert != "foreign":
                self.violate("tls", request, "the TLS handshake failed without a foreign certificate")
            return None
        except OSError as error:
            if request.cert == "foreign":
                self.count("foreign certificate refused")  # the handshake ended with a reset instead of an alert
                return None
            self.count("connect failed")
            self.violate("connect", request, "cannot connect: %s" % error)
            return None
        if request.cert == "foreign":
            # TLS 1.3 sends the client certificate after the handshake: vaultd's refusal arrives as an alert on the
            # first read. The request must not be served.
            pass
        try:
            return self._exchange(sock, request, timeout, max_body)
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def _exchange(self, sock, request, timeout, max_body):
        data, body_start = request.wire()
        send_failed = None
        deadline = time.monotonic() + timeout
        try:
            sock.settimeout(timeout)
            if request.framing == "full":
                sock.sendall(data)
            else:
                sock.sendall(data[: body_start + request.cut_at])
        except (OSError, ssl.SSLError) as error:
            send_failed = error.__class__.__name__
        if request.framing == "cut":
            self.count("cut off by the fuzzer")
            return None
        if request.framing == "tlsclose":
            # A clean TLS close (close_notify) inside the body: an end of the connection, never an end of the body.
            try:
                sock.settimeout(3.0)
                sock.unwrap()
            except (OSError, ssl.SSLError, ValueError):
                pass
            self.count("closed cleanly (close_notify) by the fuzzer")
            return None
        if request.framing == "stall":
            deadline = time.monotonic() + request.stall
        elif request.framing == "halfclose" and send_failed is None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_WR)
            except OSError:
                pass
            deadline = time.monotonic() + 8.0
        reader = Reader(sock, deadline)
        try:
            response = read_response(reader, request.method, max_body)
        except Timeout:
            if request.framing == "stall":
                self.count("stalled, no answer (expected)")
                return None
            self.count("timeout (%s%s)" % (request.category.split(":")[0], "" if request.wellformed else ", malformed"))
            if request.wellformed and request.cert != "foreign" and request.framing == "full":
                self.violate("hang", request, "no answer within %.0f s" % timeout)
            return None
        except Closed as error:
            key = "closed without an answer"
            if request.cert == "foreign":
                key = "foreign certificate refused"
            self.count(key)
            if (request.wellformed and request.framing == "full" and request.cert != "foreign"
                    and send_failed is None):
                self.violate("no answer", request, "the connection closed without an answer (%s)" % error)
            return None
        except BadResponse as error:
            self.count("malformed answer")
            self.violate("malformed answer", request, str(error))
            return None
        with self.lock:
            self.status_counts[response.status] += 1
            if request.route and 200 <= response.status < 300:
                self.routes_ok[request.route] += 1
        self.check(request, response)
        return response

    # -- checks on every answer --------------------------------------------------------------------------------

    def check(self, request, response):
        status = response.status
        if request.cert == "foreign":
            self.violate("foreign certificate", request, "answered %d to a client certificate from another CA" % status)
        if status >= 500:
            self.violate("5xx", request, "status %d, body %r" % (status, response.body[:300]))
        if request.framing != "full" and request.consumes_body and 200 <= status < 300:
            self.violate("incomplete request served", request,
                         "status %d for a request whose body was never completed: %r" % (status, response.body[:300]))
        if status >= 400:
            self.check_error_body(request, response)
        # No secret the fuzzer sent (or holds) comes back, in the head or the body.
        head_text = "\n".join("%s: %s" % kv for kv in response.headers)
        body_text = response.body.decode("latin-1")
        for secret in set(self.secrets + request.secrets):
            if len(secret) >= 12 and (secret in body_text or secret in head_text):
                self.violate("secret echoed", request, "the answer (status %d) contains a token the fuzzer sent or "
                             "holds" % status)
                break
        self.check_data(request, response)

    def check_error_body(self, request, response):
        content_type = (response.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            hint = ""
            if response.status == 400 and not response.body and response.header("connection") == "close":
                hint = (" (the bare 400 Hummingbird writes when NIO's HTTP parser rejects the request, below "
                        "vaultd's ErrorMiddleware)")
            elif response.status == 413 and not response.body:
                hint = " (NIOTooManyBytesError from a body over a route's collect(upTo:) limit)"
            self.violate("error content-type", request, "status %d with Content-Type %r, body %r%s" % (
                response.status, response.header("content-type"), response.body[:200], hint))
            return
        if request.method == "HEAD":
            return
        if not response.complete:
            self.violate("error body", request, "status %d with a cut-off body %r" % (response.status,
                                                                                        response.body[:200]))
            return
        try:
            document = json.loads(response.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            self.violate("error body", request, "status %d, body is not JSON: %r" % (response.status,
                                                                                     response.body[:200]))
            return
        error = document.get("error") if isinstance(document, dict) else None
        if (not isinstance(document, dict) or set(document) != {"error"} or not isinstance(error, dict)
                or not isinstance(error.get("code"), str) or not error["code"]
                or not isinstance(error.get("message"), str) or not error["message"]
                or not all(isinstance(value, str) for value in error.values())):
            self.violate("error body", request, "status %d, body is not {\"error\":{\"code\",\"message\"}}: %r" % (
                response.status, response.body[:300]))

    def check_data(self, request, response):
        """What a 2xx says about the data: a read of the known extract matches it byte for byte; a 201 upload is
        remembered (and must not be one the fuzzer cut or sent to the known dataset)."""
        status = response.status
        extract = response.header("x-vault-extract")
        if status in (200, 206) and extract and request.method == "GET" and response.header(
                "content-type") == "application/octet-stream":
            with self.lock:
                expected = self.known if extract == self.known_id else self.completed.get(extract, (None,) * 3)[2]
            if expected is None:
                # Read before the upload's own 201 was seen by its thread: checked again after the run.
                with self.lock:
                    self.pending_reads.append((request, response))
            elif not response.complete:
                pass  # a cut stream: vaultd's way of refusing mid-stream; the bytes before the cut are checked below
            else:
                start, stop = 0, len(expected)
                if status == 206:
                    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", response.header("content-range") or "")
                    if not match or int(match.group(3)) != len(expected):
                        self.violate("range", request, "206 with Content-Range %r for %d bytes" % (
                            response.header("content-range"), len(expected)))
                        return
                    start, stop = int(match.group(1)), int(match.group(2)) + 1
                if response.body != expected[start:stop]:
                    self.violate("data", request, "extract %s read back %d bytes that differ from bytes %d-%d of "
                                 "what was uploaded" % (extract, len(response.body), start, stop))
        if status == 201 and request.upload is not None:
            try:
                record = json.loads(response.body)
                extract_id = record["extract"]
                dataset = record["dataset"]
            except (ValueError, KeyError, TypeError):
                self.violate("upload answer", request, "201 without an extract record: %r" % response.body[:200])
                return
            force, _, body = request.upload
            if dataset == self.dataset or record.get("force") != self.force or force != self.force:
                self.violate("unexpected commit", request, "upload %s committed to %s/%s, where the fuzzer never "
                             "sends a complete upload" % (extract_id, record.get("force"), dataset))
            with self.lock:
                self.completed[extract_id] = (dataset, hashlib.sha256(body).hexdigest(), body)
                self.completed_by_dataset[dataset].add(extract_id)
        # The router takes "//v1//forces/..." and a trailing "/" for the route itself: match the path loosely.
        path = re.sub(r"/+", "/", request.target.split("?")[0]).rstrip("/")
        if status == 201 and request.upload is None and request.method == "PUT" and "/extracts" in path:
            self.violate("unexpected commit", request, "201 for an upload the fuzzer did not send complete: %r" % (
                response.body[:300],))
        if status == 200 and request.method == "POST" and "/archives/" in path and path.endswith("/shred"):
            match = re.search(r"/archives/([0-9A-Z]{26})/shred", path)
            if match:
                with self.lock:
                    self.shredded.add(match.group(1))
            try:
                certificate = json.loads(response.body).get("certificate", {}).get("id")
                if isinstance(certificate, str):
                    with self.lock:
                        self.certificates.append(certificate)
            except (ValueError, AttributeError):
                pass
        if status == 200 and request.method == "POST" and path.lstrip("/").startswith("v1/shred"):
            # The sweep shreds every expired archive (a retention the fuzzer set may have made some expire).
            try:
                for item in json.loads(response.body).get("shredded") or []:
                    with self.lock:
                        self.shredded.add(item.get("extract"))
            except (ValueError, AttributeError, TypeError):
                pass
        if status == 201 and path.endswith("/retrievals"):
            try:
                with self.lock:
                    self.retrievals.append(json.loads(response.body)["id"])
            except (ValueError, KeyError, TypeError):
                pass

    # -- simple authenticated calls for the checks -------------------------------------------------------------

    def call(self, method, target, principal, body=b"", headers=(), timeout=30.0, category="check", route=None):
        hdrs = [("Host", "%s:%d" % (self.host, self.port))]
        if principal:
            hdrs.append(("Authorization", "Bearer " + self.tokens[principal]))
        hdrs += list(headers)
        if body or method in ("PUT", "POST"):
            hdrs.append(("Content-Length", str(len(body))))
        hdrs.append(("Connection", "close"))
        request = Request(method, target, hdrs, body, category=category, principal=principal or "none")
        request.route = route
        return request, self.send(request, timeout=timeout)

    def list_extracts(self, dataset, force=None):
        request, response = self.call("GET", "/v1/forces/%s/datasets/%s/extracts" % (force or self.force, dataset),
                                      "ops")
        if response is not None and response.status == 404 and dataset not in self.fuzz_datasets + [self.dataset]:
            return []  # a dataset nobody registered or uploaded to
        if response is None or response.status != 200:
            self.violate("check", request, "cannot list the extracts of %s: %s" % (
                dataset, response.status if response else "no answer"))
            return None
        return json.loads(response.body)["extracts"]

    def list_archives(self):
        request, response = self.call("GET", "/v1/forces/%s/archives" % self.force, "ops")
        if response is None or response.status != 200:
            self.violate("check", request, "cannot list the archives: %s" % (
                response.status if response else "no answer"))
            return None
        return json.loads(response.body)["archives"]

    def read_current(self, dataset):
        return self.call("GET", "/v1/forces/%s/datasets/%s/current?use_case=%s" % (self.force, dataset,
                                                                                   self.use_case), "analyst")

    # -- the run -----------------------------------------------------------------------------------------------

    def baseline(self):
        """Before the traffic: the known extract is the only one of its dataset and reads back as uploaded."""
        listed = self.list_extracts(self.dataset)
        if listed is None:
            raise SetupError("cannot list the known dataset")
        if len(listed) != 1:
            raise SetupError("expected exactly the known extract in %s, found %d" % (self.dataset, len(listed)))
        self.known_id = listed[0]["extract"]
        request, response = self.read_current(self.dataset)
        if response is None or response.status != 200 or response.body != self.known:
            raise SetupError("the known extract does not read back before the run (status %s)" % (
                response.status if response else "none"))
        for dataset in self.fuzz_datasets:
            if self.list_extracts(dataset):
                raise SetupError("fuzz dataset %s is not empty before the run" % dataset)
        request, response = self.call("GET", "/v1/openapi.json", None)
        if response is None or response.status != 200:
            raise SetupError("cannot fetch /v1/openapi.json")
        document = json.loads(response.body)
        self.schemas = document.get("components", {}).get("schemas", {})
        self.operations = []
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                if method.upper() in ("GET", "PUT", "POST", "DELETE", "PATCH") and isinstance(operation, dict):
                    self.operations.append((method.upper(), path, operation))
        if not self.operations:
            raise SetupError("no operations in /v1/openapi.json")

    def run(self):
        self.baseline()
        print("api_fuzz: seed %d, %d operations from /v1/openapi.json, %d s, %d workers, known extract %s "
              "(%d bytes)" % (self.seed, len(self.operations), self.args.duration, self.args.workers,
                              self.known_id, len(self.known)), flush=True)
        self.start = time.monotonic()
        self.deadline = self.start + self.args.duration
        threads = [threading.Thread(target=self.monitor, name="monitor", daemon=True),
                   threading.Thread(target=self.slowloris_run, name="slowloris", daemon=True),
                   threading.Thread(target=self.bursts, name="bursts", daemon=True)]
        for index in range(self.args.workers):
            rng = random.Random("%d/%d" % (self.seed, index))
            threads.append(threading.Thread(target=self.worker, args=(rng,), name="worker-%d" % index, daemon=True))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(1.0, self.deadline + 90 - time.monotonic()))
            if thread.is_alive():
                self.violate("fuzzer", None, "thread %s did not stop in time (a request without an answer past its "
                             "deadline?)" % thread.name)
        self.stop.set()
        self.final_checks()
        return self.report()

    def worker(self, rng):
        generators = [(self.gen_route, 50), (self.gen_upload, 16), (self.gen_range_read, 9), (self.gen_raw, 9),
                      (self.gen_keepalive, 6), (self.gen_tls, 4), (self.gen_headers, 4), (self.gen_retrieval, 2)]
        total = sum(weight for _, weight in generators)
        while time.monotonic() < self.deadline and not self.stop.is_set():
            with self.lock:
                if self.sent >= self.args.max_requests:
                    break
            pick = rng.uniform(0, total)
            for generate, weight in generators:
                pick -= weight
                if pick <= 0:
                    break
            try:
                generate(rng)
            except Exception as error:  # a bug of the fuzzer itself is a failure too, but never a silent one
                self.violate("fuzzer", None, "%s in %s: %s" % (error.__class__.__name__, generate.__name__, error))
                import traceback
                traceback.print_exc()
                time.sleep(0.2)

    # -- random values -----------------------------------------------------------------------------------------

    def ulid(self, rng):
        return rng.choice("01234567") + "".join(rng.choice(ULID_ALPHABET) for _ in range(25))

    def valid_id(self, rng):
        return rng.choice(string.ascii_lowercase) + "".join(
            rng.choice(string.ascii_lowercase + string.digits + "-") for _ in range(rng.randint(1, 20)))

    def mutate(self, rng, value):
        """A malformed id, built from `value` or from scratch."""
        choices = [
            lambda: "", lambda: ".", lambda: "..", lambda: "../../../etc/passwd", lambda: "..%2F..%2Fetc%2Fpasswd",
            lambda: "%2e%2e%2f%2e%2e", lambda: value + "%00", lambda: value + "%", lambda: value + "%ZZ",
            lambda: "%C3%A9" + value, lambda: value.upper(), lambda: "-" + value, lambda: value + "_x",
            lambda: value[:1], lambda: value + "/", lambda: value + "//x", lambda: "a" * 64,
            lambda: "a" * rng.choice([100, 1000, 4000, 8000]), lambda: value * rng.randint(2, 30),
            lambda: "crème", lambda: "\u202e" + value, lambda: "\U0001F600", lambda: "ÄÖÜ-ß", lambda: "日本語",
            lambda: value + " x", lambda: value + "?x=1", lambda: value + "#frag", lambda: value + ";x",
            lambda: "' OR 1=1 --", lambda: "\"; DROP TABLE extracts; --", lambda: "%s%s%n",
            lambda: "${jndi:ldap://127.0.0.1/x}", lambda: "<script>", lambda: "{}", lambda: "null", lambda: "-1",
            lambda: "0", lambda: "18446744073709551616", lambda: "1e309", lambda: "NaN",
            lambda: self.ulid(rng).lower(), lambda: self.ulid(rng)[:25], lambda: self.ulid(rng) + "0",
            lambda: "8" + self.ulid(rng)[1:], lambda: "Z" * 26, lambda: "I" * 26, lambda: "0" * 26,
            lambda: self.ulid(rng)[:10] + "U" * 16, lambda: "\x00", lambda: "\t", lambda: "\xff\xfe",
        ]
        return rng.choice(choices)()

    def encode(self, rng, value):
        """A path segment on the wire: fully percent-encoded, minimally encoded, or raw bytes."""
        mode = rng.random()
        if mode < 0.5:
            return urllib.parse.quote(value, safe="-._~"), True
        if mode < 0.85:
            return urllib.parse.quote(value, safe="/%:@!$&'()*+,;=-._~"), True
        # Raw: only the bytes that would end the request line are encoded; the rest go as they are.
        raw = value.replace(" ", "%20").replace("\r", "%0D").replace("\n", "%0A").replace("?", "%3F").replace(
            "#", "%23")
        wellformed = all(33 <= ord(c) < 127 for c in raw)
        return raw, wellformed

    def pick_force(self, rng):
        r = rng.random()
        if r < 0.65:
            return self.force, True
        if r < 0.75:
            return self.other_force, True
        if r < 0.8:
            return self.valid_id(rng), True
        return self.mutate(rng, self.force), False

    def pick_dataset(self, rng):
        r = rng.random()
        if r < 0.35:
            return self.dataset, True
        if r < 0.6:
            return rng.choice(self.fuzz_datasets), True
        if r < 0.7:
            return self.valid_id(rng), True
        return self.mutate(rng, self.dataset), False

    def pick_extract(self, rng):
        r = rng.random()
        with self.lock:
            uploaded = list(self.completed)
        if r < 0.3:
            return self.known_id, True
        if r < 0.45 and uploaded:
            return rng.choice(uploaded), True
        if r < 0.65:
            return self.ulid(rng), True
        return self.mutate(rng, self.known_id), False

    def pick_param(self, rng, name, method):
        """A value for a path parameter, and whether it is well-shaped."""
        if name == "force":
            return self.pick_force(rng)
        if name == "dataset":
            return self.pick_dataset(rng)
        if name == "extract":
            return self.pick_extract(rng)
        if name == "version":
            return rng.choice(["1", "2", "3", "4", "0", "-1", "01", "999999999", "9999999999", "abc", "1.0", " 1",
                               "+1", "0x1", "1e3", "", "١"]), True
        if name == "id":
            r = rng.random()
            with self.lock:
                retrievals = list(self.retrievals)
            if r < 0.25:
                return self.use_case, True
            if r < 0.35 and retrievals:
                return rng.choice(retrievals), True
            if r < 0.65:
                return self.valid_id(rng), True
            return self.mutate(rng, self.use_case), False
        return self.mutate(rng, "x"), False

    def pick_principal(self, rng, request):
        """Authorization for a request: a real token most often, else none, a broken one or two."""
        r = rng.random()
        names = list(self.tokens)
        if r < 0.58:
            name = rng.choice(names)
            request.headers.append(("Authorization", "Bearer " + self.tokens[name]))
            request.principal = name
            return name
        if r < 0.68:
            request.principal = "none"
            return None
        if r < 0.73 and self.client_context:
            request.cert = "client"
            request.principal = "client certificate"
            if rng.random() < 0.3:
                request.headers.append(("Authorization", "Bearer vt_" + "0" * 64))
                request.principal = "client certificate + forged token"
            return "analyst-cert"
        if r < 0.75 and self.foreign_context:
            request.cert = "foreign"
            request.principal = "foreign certificate"
            return None
        if r < 0.8:
            first, second = rng.sample(names, 2)
            request.headers.append(("Authorization", "Bearer " + self.tokens[first]))
            request.headers.append(("Authorization", rng.choice(["Bearer " + self.tokens[second], "Basic YTpi",
                                                                  "Bearer vt_" + "f" * 64])))
            request.principal = "%s + duplicate Authorization" % first
            return first  # vaultd may take the first
        token = self.tokens[rng.choice(names)]
        forged = rng.choice([
            "Bearer " + token[:-1], "Bearer " + token + "0", "Bearer " + token.upper(), "Bearer  " + token,
            "bearer " + token, "Bearer" + token, "Bearer ", "Bearer", "Basic YWRtaW46YWRtaW4=", "Token " + token,
            "Bearer vt_" + "0" * 64, "Bearer vt_" + "".join(rng.choice("0123456789abcdef") for _ in range(64)),
            "Bearer " + "A" * rng.choice([100, 5000, 20000]), "Bearer " + token + " x",
            "Bearer " + token + ", Bearer " + token, "Bearer vt_é" + token[4:], "Bearer " + token[3:],
            "Bearer " + token[:20], "Negotiate " + token, "Bearer " + "ä" * 40, "Bearer =?utf-8?q?x?=",
        ])
        request.headers.append(("Authorization", forged))
        request.secrets.append(token)
        request.principal = "forged"
        return None

    def json_value(self, rng, schema, name="", depth=0, valid=False):
        """A value for `schema` with meaningful strings: one it accepts when `valid`, else one it may refuse."""
        if "$ref" in schema:
            schema = self.schemas.get(schema["$ref"].rsplit("/", 1)[-1], {})
        kind = schema.get("type")
        if kind == "object":
            result = {}
            for key, sub in schema.get("properties", {}).items():
                if key in schema.get("required", []) or rng.random() < 0.4:
                    result[key] = self.json_value(rng, sub, key, depth + 1, valid)
            return result
        if kind == "array":
            count = rng.randint(1 if valid else 0, 3)
            return [self.json_value(rng, schema.get("items", {}), name, depth + 1, valid) for _ in range(count)]
        if kind == "integer":
            low, high = schema.get("minimum", 0), schema.get("maximum", 5)
            return rng.randint(low, min(high, low + 5)) if valid else rng.choice([low - 1, low, high, high + 1, 0])
        if kind == "boolean":
            return rng.random() < 0.5
        if name == "datasets":
            return rng.choice(self.fuzz_datasets if valid else [self.dataset] + self.fuzz_datasets + [
                self.valid_id(rng)])
        if name == "principals":
            return rng.choice(list(self.principal_ids.values()) or ["analyst"])
        if name == "use_case":
            return self.use_case if valid else rng.choice([self.use_case, self.valid_id(rng)])
        if name == "to":
            return "pkcs11" if valid else rng.choice(["pkcs11", "keyring", "remote", ""])
        if schema.get("format") == "date-time" or name.startswith("valid_"):
            if valid:
                return rng.choice(["2020-01-01T00:00:00Z", "2099-12-31T23:59:59Z"]) if name != "valid_until" \
                    else "2099-12-31T23:59:59Z"
            return rng.choice(["2020-01-01T00:00:00Z", "2099-12-31T23:59:59Z", "2026-01-01T00:00:00+01:00",
                               "yesterday", "2026-13-45T99:99:99Z", "0000-00-00T00:00:00Z", ""])
        if valid:
            return rng.choice(["fuzz", "a reason given by the API fuzzer"])
        return rng.choice(["fuzz", "a reason", "x" * rng.randint(0, 300), "é☃\U0001F600", "\u0000", "null"])

    def json_body(self, rng, schema):
        """A JSON body for a request whose schema is `schema`: often valid, often broken in one way."""
        value = self.json_value(rng, schema) if schema else {}
        r = rng.random()
        if r < 0.35 or not isinstance(value, dict):
            text = json.dumps(value)
        elif r < 0.45:
            value["unknown_field"] = "x"
            text = json.dumps(value)
        elif r < 0.55 and value:
            key = rng.choice(list(value))
            value[key] = rng.choice([1, -1, 1.5, None, True, [], {}, [1], {"a": "b"}, 10**30])
            text = json.dumps(value)
        elif r < 0.6 and value:
            del value[rng.choice(list(value))]
            text = json.dumps(value)
        elif r < 0.65:
            text = json.dumps(value)
            text = text[: rng.randint(0, max(0, len(text) - 1))]  # truncated
        elif r < 0.7:
            text = rng.choice(["", "{", "}", "[", "null", "true", "1", "\"x\"", "[]", "{\"a\":}", "{'a':'b'}",
                               "{\"a\":NaN}", "{\"a\":\"\\ud800\"}", "\ufeff{}", "{\"a\":\"b\"}garbage",
                               "{\"reason\":\"x\",\"reason\":\"y\"}", "{\"a\":1e999999}", "\x00\x01\x02"])
        elif r < 0.75:
            text = "[" * rng.choice([100, 1000, 10000]) + "]" * rng.choice([0, 100, 1000, 10000])
        elif r < 0.8:
            text = json.dumps({"reason": "y" * rng.choice([15000, 17000, 70000, 300000]),
                               "description": "z" * 10})
        elif r < 0.85:
            text = json.dumps(value) + " " * rng.choice([10, 20000, 70000])
        elif r < 0.9:
            text = json.dumps({k: "%" * 5000 for k in value} if value else {"x": "\u0000" * 100})
        else:
            text = json.dumps(value, ensure_ascii=False)
        return text.encode("utf-8", "surrogatepass")

    # -- generators --------------------------------------------------------------------------------------------

    def base_headers(self, rng):
        headers = [("Host", rng.choice(["%s:%d" % (self.host, self.port)] * 8 + ["evil.example", "",
                                                                                 "127.0.0.1:1"]))]
        if rng.random() < 0.1:
            headers.append(("Host", "second.example"))
        return headers

    def add_body(self, request, body, rng, content_type=None, chunked_share=0.12):
        if content_type is not None:
            request.headers.append(("Content-Type", content_type))
        if rng.random() < chunked_share and body:
            request.headers.append(("Transfer-Encoding", "chunked"))
            request.chunked = self.chunks(rng, body)
        else:
            request.headers.append(("Content-Length", str(len(body))))
            request.body = body

    def chunks(self, rng, body, broken=False):
        parts = []
        position = 0
        while position < len(body):
            size = rng.randint(1, max(1, min(len(body) - position, rng.choice([7, 100, 4096, 65536, 1 << 20]))))
            parts.append(b"%x\r\n" % size + body[position:position + size] + b"\r\n")
            position += size
        parts.append(b"0\r\n\r\n")
        return parts

    def gen_route(self, rng):
        """A request of a route shape from /v1/openapi.json. Half of them start valid (the role the route names,
        known ids, a body its schema accepts) and get at most one mutation, so the authorised paths are reached;
        the others are random in every part."""
        method, path, operation = rng.choice(self.operations)
        valid = rng.random() < 0.5
        mutation = rng.choice(["none", "none", "principal", "param", "header", "body", "query", "method"]) \
            if valid else "all"
        request = Request(method, "", category="route" if not valid else "route:valid+" + mutation)
        request.route = "%s %s" % (method, path)
        wellformed = True
        segments = []
        values = {}
        names = [segment[1:-1] for segment in path.strip("/").split("/") if segment.startswith("{")]
        mutated_name = rng.choice(names) if names and mutation == "param" else None
        for segment in path.strip("/").split("/"):
            if segment.startswith("{") and segment.endswith("}"):
                name = segment[1:-1]
                if valid and name != mutated_name:
                    value = self.valid_param(rng, name, method, path)
                    encoded, ok = urllib.parse.quote(value, safe="-._~"), True
                else:
                    value, _ = self.pick_param(rng, name, method)
                    encoded, ok = self.encode(rng, value)
                values[name] = value
                wellformed = wellformed and ok
                segments.append(encoded)
            else:
                segments.append(segment)
        # Another method on the same path (404 must be JSON too).
        if (not valid and rng.random() < 0.12) or mutation == "method":
            request.method = rng.choice(["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE",
                                         "PROPFIND", "get", "X" * rng.choice([3, 40]), "GET\x7f"])
            wellformed = wellformed and request.method.isalpha() and request.method.isascii()
        query = []
        for parameter in operation.get("parameters", []):
            if not isinstance(parameter, dict) or parameter.get("in") != "query":
                continue
            if valid and mutation != "query":
                value = self.valid_query(rng, parameter["name"], path)
                if value is not None:
                    query.append((parameter["name"], value))
            elif rng.random() < 0.7:
                query.append((parameter["name"], self.query_value(rng, parameter["name"])))
        if (not valid and rng.random() < 0.15) or mutation == "query":
            query.append((rng.choice(["use_case", "unknown", "access_token", "extract", "since", "limit", ""]),
                          self.query_value(rng, "use_case")))
        if not valid and rng.random() < 0.05:
            query.append(("access_token", self.tokens[rng.choice(list(self.tokens))]))
            request.secrets.append(query[-1][1])
        target = "/" + "/".join(segments)
        if not valid and rng.random() < 0.05:
            target = rng.choice([target + "/", "/" + target, target.replace("/v1/", "/v1//"), target + "/..",
                                 target.upper(), "/v2" + target[3:], target + ";jsessionid=1", "//" + target])
        if query:
            target += "?" + "&".join(
                urllib.parse.quote(k, safe="") + ("=" + urllib.parse.quote(v, safe="")
                                                  if valid or rng.random() < 0.95 else "")
                for k, v in query)
        if not valid and rng.random() < 0.03:
            target += rng.choice(["?", "&&&", "?=&=", "?a=%ZZ", "?a=%", "#x"])
            wellformed = wellformed and "#" not in target
        request.target = target
        request.wellformed = wellformed
        if valid:
            request.headers = [("Host", "%s:%d" % (self.host, self.port))]
            if mutation == "principal":
                principal = self.pick_principal(rng, request)
            else:
                principal = self.role_principal(rng, operation)
                if principal:
                    request.headers.append(("Authorization", "Bearer " + self.tokens[principal]))
                    request.principal = principal
            if mutation == "header":
                self.extra_headers(rng, request, force=True)
        else:
            request.headers = self.base_headers(rng)
            principal = self.pick_principal(rng, request)
            self.extra_headers(rng, request)
        # Requests that would change what the checks rely on are sent as someone who may not make them.
        mutating = request.method in ("PUT", "POST", "DELETE")
        if mutating and role_of(principal) == "custodian" and "use-cases" in path \
                and self.use_case in urllib.parse.unquote(request.target):
            self.replace_principal(request, "analyst")
            principal = "analyst"
        if request.method == "POST" and path.endswith("/keys/rotate") and role_of(principal) == "custodian":
            with self.lock:
                self.rotations += 1
                over = self.rotations > self.args.max_rotations
            if over:
                self.replace_principal(request, "ops")
                principal = "ops"
        body_spec = operation.get("requestBody", {}).get("content", {})
        request.consumes_body = bool(body_spec) and request.method == method
        if path.endswith("/extracts") and method == "PUT" and request.method == "PUT":
            return self.send_upload_shape(rng, request, values, principal)
        if "application/json" in body_spec or (not valid and request.method in ("POST", "PUT", "DELETE")
                                               and rng.random() < 0.3):
            schema = body_spec.get("application/json", {}).get("schema", {})
            if valid and mutation != "body":
                body = json.dumps(self.json_value(rng, schema, valid=True)).encode()
                content_type = "application/json"
            else:
                body = self.json_body(rng, schema)
                content_type = rng.choice(["application/json"] * 6 + [
                    "text/plain", "application/json; charset=utf-8", "application/x-www-form-urlencoded", None,
                    "application/vnd.vault.sealed", "*/*"])
            self.add_body(request, body, rng, content_type, chunked_share=0.12 if not valid else 0.05)
        elif request.method in ("POST", "PUT", "DELETE") and (valid or rng.random() < 0.5):
            request.headers.append(("Content-Length", "0"))
        if valid:
            self.send(request)
        else:
            self.finish_and_send(rng, request)

    def replace_principal(self, request, name):
        request.headers = [(k, v) for k, v in request.headers if k != "Authorization"]
        request.headers.append(("Authorization", "Bearer " + self.tokens[name]))
        request.principal = name
        request.cert = None

    def role_principal(self, rng, operation):
        """A token name holding a role the operation's description names (`Roles: custodian, ops.`), or None for
        the public routes."""
        text = operation.get("description", "") + " " + operation.get("summary", "")
        match = re.search(r"Roles?:([^.]*)\.", text)
        if match:
            if "none" in match.group(1):
                return None
            wanted = {{"auditor": "dpo"}.get(word, word) for word in re.findall(r"[a-z]+", match.group(1))}
        else:
            wanted = set(ROLE_NAMES)
        if "any" in wanted:
            wanted = set(ROLE_NAMES)
        names = [name for name in self.tokens if role_of(name) in wanted]
        return rng.choice(names) if names else rng.choice(list(self.tokens))

    def valid_param(self, rng, name, method, path):
        """A path parameter as the route expects it, from what the fuzzer knows exists."""
        with self.lock:
            uploaded = list(self.completed)
            retrievals = list(self.retrievals)
            certificates = list(self.certificates)
        if name == "force":
            return self.force
        if name == "dataset":
            return rng.choice([self.dataset] + self.fuzz_datasets)
        if name == "extract":
            if "/archives/" in path and uploaded:
                return rng.choice(uploaded)
            return rng.choice([self.known_id] + uploaded[-3:])
        if name == "version":
            return rng.choice(["1", "2", "3"])
        if name == "id":
            if "/retrievals/" in path and retrievals:
                return rng.choice(retrievals)
            if "/certificates/" in path and certificates:
                return rng.choice(certificates)
            if "/tokens/" in path:
                return "".join(rng.choice("0123456789abcdef") for _ in range(12))  # never a real token's id
            if "/use-cases/" in path:
                return "fz-" + rng.choice("abcd")
            return self.ulid(rng)
        return self.valid_id(rng)

    def valid_query(self, rng, name, path):
        if name == "use_case":
            return self.use_case
        if name == "expired":
            return "true"
        if name == "dry_run":
            return rng.choice(["true", "false"])
        if name == "force":
            return rng.choice([self.force, None])
        if name == "since":
            return rng.choice(["0", None])
        if name == "extract":
            return rng.choice([self.known_id, None])
        if name == "limit":
            return rng.choice(["5", None])
        if name == "action":
            return rng.choice(["read", "upload", None])
        return None

    def query_value(self, rng, name):
        if name == "use_case":
            return rng.choice([self.use_case, self.valid_id(rng), "", self.mutate(rng, self.use_case)])
        if name in ("expired", "dry_run"):
            return rng.choice(["true", "false", "TRUE", "1", "", "yes"])
        if name in ("since", "after", "limit"):
            return rng.choice(["0", "1", "-1", "99999999999999999999", "2026-01-01T00:00:00Z", "x", "", "1e9",
                               "9223372036854775807", "9223372036854775808"])
        if name in ("from", "until"):
            return rng.choice(["2026-01-01T00:00:00Z", "yesterday", "", "2026-02-30T00:00:00Z"])
        if name == "extract":
            return rng.choice([self.known_id, self.ulid(rng), self.mutate(rng, self.known_id)])
        if name == "force":
            return rng.choice([self.force, self.other_force, "", self.mutate(rng, self.force)])
        return rng.choice(["x", "", self.dataset, self.valid_id(rng), "read", "allowed", "denied",
                           self.mutate(rng, "x")])

    def extra_headers(self, rng, request, force=False):
        if force:
            name, value = rng.choice([
                ("Range", self.range_value(rng, len(self.known))),
                ("X-Vault-Read-Request", self.read_request_value(rng)),
                ("Content-Type", rng.choice(["", "application/vnd.vault.sealed", "text/html; charset=x", "\u00e9"])),
                ("Expect", "100-continue"), ("Connection", "close"), ("Transfer-Encoding", "identity"),
                ("Accept", "*/*;q=" + "9" * 1000), ("Authorization", "Bearer vt_" + "0" * 64)])
            request.headers.append((name, value))
            return
        if rng.random() < 0.15:
            request.headers.append(("Range", self.range_value(rng, len(self.known))))
        if rng.random() < 0.08:
            request.headers.append(("X-Vault-Read-Request", self.read_request_value(rng)))
        if rng.random() < 0.05:
            request.headers.append(("Expect", rng.choice(["100-continue", "200-ok", ""])))
        if rng.random() < 0.04:
            request.headers.append(("Accept-Encoding", "gzip, br, *"))
        if rng.random() < 0.03:
            request.headers.append(("Cookie", "session=" + self.tokens[rng.choice(list(self.tokens))]))
            request.secrets.append(request.headers[-1][1][8:])
        if rng.random() < 0.03:
            request.headers.append(("X-Forwarded-For", "10.0.0.1, 127.0.0.1"))
        if rng.random() < 0.1:
            request.headers.append(("Connection", rng.choice(["close", "keep-alive", "upgrade", "close, close"])))

    def range_value(self, rng, size):
        return rng.choice([
            "bytes=0-0", "bytes=0-9", "bytes=-1", "bytes=-%d" % size, "bytes=-%d" % (size + 10), "bytes=5-",
            "bytes=%d-" % (size - 1), "bytes=%d-" % size, "bytes=%d-%d" % (size // 2, size + 100), "bytes=9-2",
            "bytes=0-1,4-5", "bytes=abc", "items=0-1", "bytes=", "bytes=-0", "bytes=-", "bytes=18446744073709551615-",
            "bytes=99999999999999999999-", "bytes= 0-1", "bytes=0-1 ", "BYTES=0-1", "bytes=0-" + "9" * 120,
            "bytes=0--1", "bytes=--1", "bytes=0x10-0x20", "bytes=1-1", "bytes=%d-%d" % (size - 1, size - 1),
            "bytes=\u00e9-1", "bytes=0-18446744073709551615", "bytes=18446744073709551614-18446744073709551615",
        ])

    def read_request_value(self, rng):
        return rng.choice([
            "", "x", "." * 3, "a.b.c", "eyJ9.e30.", "e30", "{}", "null", "=" * 100, "A" * rng.choice([100, 8000]),
            "e30." + "A" * 86, "eyJ2IjoxfQ.%s" % ("A" * 86), "\u00e9\u00e9", "../..", "%00", "v1." + "_" * 64,
            "e30.e30.e30.e30", "eyJmb3JjZSI6IndtcCJ9." + "-" * 86, "eyJ2ZXJzaW9uIjoxLCJmb3JjZSI6MX0.AAAA",
        ])

    def finish_and_send(self, rng, request):
        if request.body and rng.random() < 0.08 and request.chunked is None:
            # A declared body that is never completed, or a connection closed inside it.
            request.framing = rng.choice(["cut", "stall", "halfclose", "tlsclose"])
            request.cut_at = rng.randint(0, max(0, len(request.body) - 1))
            request.stall = rng.uniform(1.0, 4.0) if request.framing == "stall" else 0.0
        self.send(request)

    def send_upload_shape(self, rng, request, values, principal):
        """A PUT of an extract from a route shape: complete only to a fuzz dataset as the uploader."""
        size = rng.choice([0, 1, 100, 4096, 65536, 200000])
        body = rng.randbytes(size)
        # Complete uploads: the uploader's, well-formed, to a fuzz dataset of its force (remembered when 201), and
        # those of principals that may not upload anywhere (refused). Any other upload is cut off.
        role = role_of(principal)
        complete_allowed = (role == "uploader" and values.get("force") == self.force
                            and values.get("dataset") in self.fuzz_datasets and request.wellformed
                            and request.cert is None)
        may_upload = role == "uploader" or (principal or "").startswith("other")
        sealed = rng.random() < 0.2
        content_type = (rng.choice(["application/vnd.vault.sealed", "application/vnd.vault.sealed; v=1",
                                    "APPLICATION/VND.VAULT.SEALED", "application/vnd.vault.sealedx"])
                        if sealed else rng.choice(["application/octet-stream", "text/csv", None, "",
                                                   "multipart/form-data; boundary=x"]))
        self.add_body(request, body, rng, content_type)
        if may_upload and not complete_allowed:
            # The uploader may write here; the fuzzer never completes such an upload: it cuts it.
            request.framing = rng.choice(["cut", "stall", "halfclose", "tlsclose"])
            request.cut_at = max(0, len(body) - 1) if body else 0
            if request.chunked is not None:
                request.chunked = request.chunked[:-1]  # no last chunk: the body never ends
                request.framing = rng.choice(["cut", "stall", "halfclose", "tlsclose"])
                request.cut_at = len(b"".join(request.chunked))
            if not body and request.chunked is None:
                request.headers = [(k, v) for k, v in request.headers if k != "Content-Length"]
                request.headers.append(("Content-Length", "10"))
            request.stall = rng.uniform(1.0, 3.0) if request.framing == "stall" else 0.0
            if values.get("force") == self.force and isinstance(values.get("dataset"), str):
                with self.lock:
                    self.cut_datasets.add(values["dataset"])
        elif complete_allowed:
            request.upload = (values["force"], values["dataset"], body)
        self.record_upload_bytes(len(body))
        self.send(request)

    def record_upload_bytes(self, count):
        with self.lock:
            self.upload_bytes += count

    def gen_upload(self, rng):
        """Uploads: complete ones to a fuzz dataset, and cut, stalled, broken or refused ones everywhere."""
        with self.lock:
            budget_left = self.upload_bytes < self.args.max_upload_bytes
        kind = rng.choice(["complete", "complete-chunked", "cut", "stall", "halfclose", "tlsclose", "chunked-cut",
                           "chunked-bad-size", "chunked-no-end", "sealed-truncated", "sealed-cut", "sealed-flipped",
                           "wrong-principal", "other-force", "expect-continue", "cl-and-te", "double-cl"])
        size = rng.choice([0, 1, 1000, 65535, 65536, 65537, 300000, 1 << 20, 3 << 20]) if budget_left else rng.choice(
            [0, 1, 1000])
        body = rng.randbytes(size)
        dataset = rng.choice(self.fuzz_datasets)
        target_dataset = rng.choice([self.dataset, dataset])
        request = Request("PUT", "", category="upload:" + kind)
        request.consumes_body = True
        request.headers = [("Host", "%s:%d" % (self.host, self.port))]
        principal = "uploader"
        content_type = "application/octet-stream"
        if kind.startswith("sealed"):
            if self.sealed is None:
                return
            target_dataset = self.dataset
            content_type = "application/vnd.vault.sealed"
            body = self.sealed
        if kind == "wrong-principal":
            principal = rng.choice([name for name in self.tokens if name != "uploader"])
            target_dataset = self.dataset
        if kind == "other-force":
            principal = rng.choice([name for name in self.tokens if role_of(name) in ROLE_NAMES])
        force = self.other_force if kind == "other-force" else self.force
        request.target = "/v1/forces/%s/datasets/%s/extracts" % (force, target_dataset)
        request.headers.append(("Authorization", "Bearer " + self.tokens[principal]))
        request.principal = principal
        request.headers.append(("Content-Type", content_type))
        cut = True
        if kind in ("complete", "expect-continue"):
            target_dataset = dataset
            request.target = "/v1/forces/%s/datasets/%s/extracts" % (force, dataset)
            request.headers.append(("Content-Length", str(len(body))))
            if kind == "expect-continue":
                request.headers.append(("Expect", "100-continue"))
            request.body = body
            request.upload = (force, dataset, body)
            cut = False
        elif kind == "complete-chunked":
            target_dataset = dataset
            request.target = "/v1/forces/%s/datasets/%s/extracts" % (force, dataset)
            request.headers.append(("Transfer-Encoding", "chunked"))
            request.chunked = self.chunks(rng, body)
            request.upload = (force, dataset, body)
            cut = False
        elif kind in ("cut", "stall", "halfclose", "tlsclose"):
            request.headers.append(("Content-Length", str(len(body) + rng.choice([1, 10, 1 << 20]))))
            request.body = body
            request.framing = kind
            request.cut_at = len(body) if kind != "cut" else rng.randint(0, len(body))
            request.stall = rng.uniform(1.0, 5.0) if kind == "stall" else 0.0
        elif kind == "chunked-cut":
            request.headers.append(("Transfer-Encoding", "chunked"))
            request.chunked = self.chunks(rng, body)
            wire = b"".join(request.chunked)
            request.framing = rng.choice(["cut", "halfclose", "tlsclose"])
            request.cut_at = rng.randint(0, max(0, len(wire) - 6))
        elif kind == "chunked-no-end":
            request.headers.append(("Transfer-Encoding", "chunked"))
            request.chunked = self.chunks(rng, body)[:-1]
            request.framing = "stall"
            request.cut_at = len(b"".join(request.chunked))
            request.stall = rng.uniform(1.0, 4.0)
        elif kind == "chunked-bad-size":
            # A complete request whose chunk framing turns invalid midway: vaultd must refuse it (4xx or a closed
            # connection), never commit it, never answer 5xx.
            request.headers.append(("Transfer-Encoding", "chunked"))
            parts = self.chunks(rng, body)
            bad = rng.choice([b"zz\r\n", b"-1\r\n", b"ffffffffffffffffffff\r\n", b"1;\x00\r\n", b"\r\n", b"0x10\r\n"])
            keep = rng.randint(0, max(0, len(parts) - 1))
            request.chunked = parts[:keep] + [bad + b"x" * 16 + b"\r\n", b"0\r\n\r\n"]
            request.wellformed = False
            request.note = "invalid chunk size %r after %d good chunks" % (bad, keep)
        elif kind == "sealed-truncated":
            body = self.sealed[: rng.randint(0, len(self.sealed) - 1)]
            request.headers.append(("Content-Length", str(len(body))))
            request.body = body
            request.note = "a sealed file of the known dataset, truncated to %d of %d bytes" % (len(body),
                                                                                                len(self.sealed))
        elif kind == "sealed-flipped":
            flipped = bytearray(self.sealed)
            position = rng.randrange(len(flipped))
            flipped[position] ^= 1 << rng.randrange(8)
            body = bytes(flipped)
            request.headers.append(("Content-Length", str(len(body))))
            request.body = body
            request.note = "a sealed file of the known dataset with one bit flipped at byte %d" % position
        elif kind == "sealed-cut":
            request.headers.append(("Content-Length", str(len(body))))
            request.body = body
            request.framing = rng.choice(["cut", "stall", "halfclose", "tlsclose"])
            request.cut_at = rng.randint(0, len(body) - 1)
            request.stall = rng.uniform(1.0, 3.0) if request.framing == "stall" else 0.0
        elif kind in ("wrong-principal", "other-force"):
            request.headers.append(("Content-Length", str(len(body))))
            request.body = body
            if kind == "other-force" and principal == "uploader":
                pass  # the uploader of one force uploading to another: refused
        elif kind == "cl-and-te":
            request.headers.append(("Content-Length", str(len(body))))
            request.headers.append(("Transfer-Encoding", "chunked"))
            request.chunked = self.chunks(rng, body)
            request.wellformed = False
        elif kind == "double-cl":
            request.headers.append(("Content-Length", str(len(body))))
            request.headers.append(("Content-Length", str(len(body) + 1)))
            request.body = body
            request.wellformed = False
        if cut and force == self.force:
            with self.lock:
                self.cut_datasets.add(target_dataset)
        self.record_upload_bytes(len(body))
        self.send(request, timeout=60.0)

    def gen_range_read(self, rng):
        """Reads of the known extract (and of uploaded ones), whole or ranged, as the analyst or someone else."""
        with self.lock:
            uploaded = list(self.completed)
        request = Request("GET", "", category="read")
        if uploaded and rng.random() < 0.3:
            extract = rng.choice(uploaded)
            request.target = "/v1/forces/%s/extracts/%s?use_case=%s" % (self.force, extract, self.use_case)
        elif rng.random() < 0.3:
            request.target = "/v1/forces/%s/extracts/%s?use_case=%s" % (self.force, self.known_id, self.use_case)
        else:
            request.target = "/v1/forces/%s/datasets/%s/current?use_case=%s" % (
                self.force, rng.choice([self.dataset] * 3 + self.fuzz_datasets), self.use_case)
        request.headers = [("Host", "%s:%d" % (self.host, self.port))]
        if rng.random() < 0.75:
            request.headers.append(("Authorization", "Bearer " + self.tokens["analyst"]))
            request.principal = "analyst"
        else:
            self.pick_principal(rng, request)
        if rng.random() < 0.7:
            request.headers.append(("Range", self.range_value(rng, len(self.known))))
        if rng.random() < 0.1:
            request.headers.append(("Range", self.range_value(rng, len(self.known))))  # a duplicate
        if rng.random() < 0.15:
            request.headers.append(("X-Vault-Read-Request", self.read_request_value(rng)))
        if rng.random() < 0.1:
            # A reader that goes away mid-stream.
            request.framing = "full"
            request.note = "reader hangs up after the head"
            self.send_and_hang_up(request)
            return
        self.send(request)

    def gen_retrieval(self, rng):
        """The dual-control path end to end: the analyst asks to read an archive the fuzzer uploaded, two custodians
        approve, the analyst reads it (ranged or whole), and what comes back must be what was uploaded."""
        with self.lock:
            uploaded = list(self.completed)
        if not uploaded:
            return
        extract = rng.choice(uploaded)
        base = "/v1/forces/%s" % self.force
        reason = json.dumps({"use_case": self.use_case, "reason": "fuzz retrieval"}).encode()
        request, response = self.call("POST", "%s/archives/%s/retrievals" % (base, extract), "analyst", reason,
                                      headers=[("Content-Type", "application/json")], category="retrieval",
                                      route="POST /v1/forces/{force}/archives/{extract}/retrievals")
        if response is None or response.status != 201:
            return
        retrieval = json.loads(response.body).get("id")
        for custodian in ("custodian", "custodian2"):
            if custodian in self.tokens:
                self.call("POST", "%s/retrievals/%s/approve" % (base, retrieval), custodian, category="retrieval",
                          route="POST /v1/forces/{force}/retrievals/{id}/approve")
        headers = [("Range", self.range_value(rng, len(self.completed[extract][2])))] if rng.random() < 0.5 else []
        self.call("GET", "%s/archives/%s?use_case=%s" % (base, extract, self.use_case), "analyst", headers=headers,
                  category="retrieval", route="GET /v1/forces/{force}/archives/{extract}")

    def send_and_hang_up(self, request):
        with self.lock:
            self.sent += 1
            self.categories[request.category + ":hangup"] += 1
        try:
            sock = self.connect(request.cert)
        except (OSError, ssl.SSLError):
            self.count("connect failed")
            return
        try:
            sock.settimeout(10)
            sock.sendall(request.wire()[0])
            sock.recv(100)
            self.count("reader hung up")
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()

    def gen_headers(self, rng):
        """Odd, huge and duplicated headers on otherwise ordinary requests."""
        request = Request("GET", "/v1/forces/%s/datasets/%s/current?use_case=%s" % (self.force, self.dataset,
                                                                                    self.use_case),
                          category="headers")
        request.headers = [("Host", "%s:%d" % (self.host, self.port))]
        self.pick_principal(rng, request)
        kind = rng.choice(["huge-value", "many", "duplicate-range", "duplicate-content-type", "bad-name",
                           "obs-fold", "nul", "latin1", "empty-name", "long-name", "huge-cookie"])
        if kind == "huge-value":
            request.headers.append(("X-Fuzz", "v" * rng.choice([8000, 70000, 200000])))
        elif kind == "many":
            for index in range(rng.choice([100, 500, 2000])):
                request.headers.append(("X-Fuzz-%d" % index, "v"))
        elif kind == "duplicate-range":
            request.headers += [("Range", "bytes=0-1"), ("Range", "bytes=2-3")]
        elif kind == "duplicate-content-type":
            request.method = "PUT"
            request.target = "/v1/forces/%s/use-cases/%s" % (self.force, self.valid_id(rng))
            body = b'{"description":"d","lawful_basis":"b","datasets":["%s"],"principals":["x"]}' % (
                self.fuzz_datasets[0].encode())
            request.headers += [("Content-Type", "application/json"), ("Content-Type", "text/plain"),
                                ("Content-Length", str(len(body)))]
            request.body = body
        elif kind == "bad-name":
            request.headers.append(("X Fuzz", "v"))
            request.wellformed = False
        elif kind == "obs-fold":
            request.headers.append(("X-Fuzz", "a\r\n b"))
            request.wellformed = False
        elif kind == "nul":
            request.headers.append(("X-Fuzz", "a\x00b"))
            request.wellformed = False
        elif kind == "latin1":
            request.headers.append(("X-Fuzz", "caf\udce9"))  # one raw 0xE9 byte on the wire
        elif kind == "empty-name":
            request.headers.append(("", "v"))
            request.wellformed = False
        elif kind == "long-name":
            request.headers.append(("X-" + "n" * rng.choice([1000, 100000]), "v"))
        elif kind == "huge-cookie":
            request.headers.append(("Cookie", "c=" + "x" * 50000))
        request.note = kind
        self.send(request)

    def gen_raw(self, rng):
        """Bytes that are not (quite) HTTP/1.1."""
        host = "Host: %s:%d\r\n" % (self.host, self.port)
        auth = "Authorization: Bearer %s\r\n" % self.tokens[rng.choice(list(self.tokens))]
        choices = [
            "GET /healthz HTTP/1.1\r\n\r\n",  # no Host: HTTP/1.1 requires one
            "GET /healthz HTTP/1.0\r\n\r\n",
            "GET /healthz\r\n\r\n",
            "GET /healthz HTTP/2.0\r\n" + host + "\r\n",
            "GET /healthz HTTP/9.9\r\n" + host + "\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET * HTTP/1.1\r\n" + host + "\r\n",
            "OPTIONS * HTTP/1.1\r\n" + host + "\r\n",
            "CONNECT 127.0.0.1:1 HTTP/1.1\r\n" + host + "\r\n",
            "GET https://127.0.0.1/v1/openapi.json HTTP/1.1\r\n" + host + "\r\n",
            "GET http://evil.example/v1/forces/wmp/archives HTTP/1.1\r\n" + host + auth + "\r\n",
            "GET /v1/forces/wmp/archives HTTP/1.1\r\n" + host + auth.replace(": ", ":") + "\r\n",
            "GET  /healthz  HTTP/1.1\r\n" + host + "\r\n",
            "GET /healthz HTTP/1.1\n" + host.replace("\r\n", "\n") + "\n",
            "GET /he\x00althz HTTP/1.1\r\n" + host + "\r\n",
            "GET /healthz HTTP/1.1\r\n" + host + "Content-Length: -1\r\n\r\n",
            "GET /healthz HTTP/1.1\r\n" + host + "Content-Length: 1x\r\n\r\n",
            "GET /healthz HTTP/1.1\r\n" + host + "Content-Length: 99999999999999999999999\r\n\r\n",
            "POST /v1/shred?expired=true HTTP/1.1\r\n" + host + auth
            + "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            "POST /v1/shred?expired=true HTTP/1.1\r\n" + host + auth + "Transfer-Encoding: gzip\r\n\r\n",
            "PUT /v1/forces/wmp/use-cases/x1 HTTP/1.1\r\n" + host + auth + "Transfer-Encoding: chunked\r\n\r\n"
            "5\r\n{\"a\":\r\nZZZ\r\n",
            "GET /healthz HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            "\r\n\r\n\r\n",
            "\x16\x03\x01\x02\x00\x01\x00",  # a TLS record inside TLS
            "G" * 70000 + " / HTTP/1.1\r\n\r\n",
            "GET /" + "a" * rng.choice([9000, 70000, 300000]) + " HTTP/1.1\r\n" + host + "\r\n",
            "GET /healthz HTTP/1.1\r\n" + host + "X: " + "x" * 100 + "\r\n" * 1 + " folded\r\n\r\n",
            "GET /healthz?" + "&".join("a%d=%d" % (i, i) for i in range(3000)) + " HTTP/1.1\r\n" + host + "\r\n",
            "".join(chr(rng.randrange(256)) for _ in range(rng.randint(1, 2000))),
        ]
        text = rng.choice(choices)
        request = Request("RAW", "", category="raw")
        request.raw = text.encode("latin-1")
        request.wellformed = False
        request.principal = "raw"
        request.secrets = [auth.split(" ")[-1].strip()]
        self.send(request, timeout=6.0)

    def gen_keepalive(self, rng):
        """Several requests on one connection, sequential or pipelined: each is authenticated on its own."""
        count = rng.randint(2, 5)
        requests = []
        for index in range(count):
            request = Request("GET", "", category="keepalive")
            request.headers = [("Host", "%s:%d" % (self.host, self.port))]
            principal = self.pick_principal(rng, request) if index > 0 else None
            if index == 0:
                request.headers.append(("Authorization", "Bearer " + self.tokens["analyst"]))
                request.principal = "analyst"
                principal = "analyst"
            if request.cert:
                request.cert = None
                request.principal = "none"
                principal = None
            request.target = rng.choice([
                "/v1/forces/%s/datasets/%s/current?use_case=%s" % (self.force, self.dataset, self.use_case),
                "/v1/forces/%s/archives" % self.force, "/healthz", "/v1/forces/%s/keys" % self.force,
                "/v1/forces/%s/use-cases" % self.force, "/nope"])
            request.expect_principal = principal
            requests.append(request)
        pipelined = rng.random() < 0.5
        with self.lock:
            self.sent += count
            self.categories["keepalive" + (":pipelined" if pipelined else "")] += count
        try:
            sock = self.connect()
        except (OSError, ssl.SSLError) as error:
            self.count("connect failed")
            self.violate("connect", requests[0], "cannot connect: %s" % error)
            return
        try:
            sock.settimeout(20)
            if pipelined:
                sock.sendall(b"".join(r.wire()[0] for r in requests))
            reader = Reader(sock, time.monotonic() + 30)
            for request in requests:
                if not pipelined:
                    sock.sendall(request.wire()[0])
                try:
                    response = read_response(reader, request.method, 16 << 20)
                except (Closed, Timeout, BadResponse) as error:
                    self.count("keepalive: %s" % error.__class__.__name__)
                    if not isinstance(error, Closed):
                        self.violate("keepalive", request, "no answer on a kept-alive connection: %s" % error)
                    return
                with self.lock:
                    self.status_counts[response.status] += 1
                self.check(request, response)
                # A request with no valid credentials is never served as the previous request's principal.
                if request.expect_principal is None and "/v1/forces/" in request.target and response.status < 400:
                    self.violate("auth carried over", request, "status %d without credentials of its own on a "
                                 "connection whose first request was the analyst's" % response.status)
                if (response.header("connection") or "").lower() == "close":
                    return
        except (OSError, ssl.SSLError):
            self.count("keepalive: send failed")
        finally:
            sock.close()

    def gen_tls(self, rng):
        """TLS-level oddities: plain HTTP on the TLS port, a handshake then silence, garbage records."""
        kind = rng.choice(["plain-http", "garbage", "connect-close", "handshake-close", "tls-then-nothing",
                           "foreign-cert", "old-tls"])
        with self.lock:
            self.sent += 1
            self.categories["tls:" + kind] += 1
        try:
            if kind in ("plain-http", "garbage", "connect-close"):
                sock = socket.create_connection((self.host, self.port), timeout=5)
                try:
                    if kind == "plain-http":
                        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    elif kind == "garbage":
                        sock.sendall(rng.randbytes(rng.randint(1, 5000)))
                    if kind != "connect-close":
                        sock.settimeout(5)
                        try:
                            sock.recv(1000)
                        except OSError:
                            pass
                finally:
                    sock.close()
            elif kind in ("handshake-close", "tls-then-nothing"):
                sock = self.connect()
                if kind == "tls-then-nothing":
                    time.sleep(rng.uniform(0.1, 1.0))
                sock.close()
            elif kind == "foreign-cert" and self.foreign_context:
                request = Request("GET", "/v1/forces/%s/archives" % self.force,
                                  [("Host", "%s:%d" % (self.host, self.port))], category="tls:foreign-cert")
                request.cert = "foreign"
                request.principal = "foreign certificate"
                self.send(request)
            elif kind == "old-tls":
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.load_verify_locations(self.args.ca_file)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", DeprecationWarning)
                        context.maximum_version = ssl.TLSVersion.TLSv1_1
                        context.minimum_version = ssl.TLSVersion.TLSv1
                    sock = socket.create_connection((self.host, self.port), timeout=5)
                    try:
                        context.wrap_socket(sock, server_hostname=self.host)
                        self.violate("tls", None, "vaultd accepted a TLS 1.1 (or older) handshake")
                    except (ssl.SSLError, OSError):
                        self.count("old TLS refused")
                    finally:
                        sock.close()
                except (ValueError, ssl.SSLError):
                    pass  # this OpenSSL cannot even offer TLS 1.1
            self.count("tls:" + kind)
        except (OSError, ssl.SSLError):
            self.count("tls:%s failed" % kind)

    # -- the background threads --------------------------------------------------------------------------------

    def pid_alive(self):
        if not self.args.vaultd_pid:
            return True
        try:
            os.kill(self.args.vaultd_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:
            with open("/proc/%d/stat" % self.args.vaultd_pid) as handle:
                return handle.read().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    def health_once(self):
        started = time.monotonic()
        request = Request("GET", "/healthz", [("Host", "%s:%d" % (self.host, self.port)), ("Connection", "close")],
                          category="health")
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.args.health_timeout)
            sock = self.context.wrap_socket(sock, server_hostname=self.host)
            try:
                sock.settimeout(self.args.health_timeout)
                sock.sendall(request.wire()[0])
                response = read_response(Reader(sock, started + self.args.health_timeout), "GET", 4096)
            finally:
                sock.close()
        except (OSError, ssl.SSLError, Closed, Timeout, BadResponse) as error:
            return None, "%s: %s" % (error.__class__.__name__, error)
        elapsed = time.monotonic() - started
        if response.status != 200 or json.loads(response.body or b"{}").get("status") != "ok":
            return None, "status %d %r" % (response.status, response.body[:100])
        return elapsed, None

    def monitor(self):
        """/healthz every half second within --health-timeout; the known extract read back every few seconds."""
        next_read = time.monotonic() + 2
        while time.monotonic() < self.deadline:
            if not self.pid_alive():
                self.violate("vaultd died", None, "vaultd's process %d is gone at %.1f s into the run" % (
                    self.args.vaultd_pid, time.monotonic() - self.start))
                self.stop.set()
                return
            elapsed, error = self.health_once()
            with self.lock:
                self.health.append((time.monotonic() - self.start, elapsed))
            if error:
                self.violate("health", None, "/healthz did not answer 200 within %.1f s at %.1f s into the run: %s"
                             % (self.args.health_timeout, time.monotonic() - self.start, error))
            if time.monotonic() >= next_read:
                next_read = time.monotonic() + 4
                self.check_known("during the run")
            time.sleep(0.5)

    def check_known(self, when):
        request, response = self.read_current(self.dataset)
        self.known_reads += 1
        if response is None:
            return  # already reported by send()
        extract = response.header("x-vault-extract")
        if response.status != 200 or extract != self.known_id or response.body != self.known:
            self.violate("known extract", request, "%s the current extract of %s is %s (status %d, %d bytes), not "
                         "the known %s (%d bytes)" % (when, self.dataset, extract, response.status,
                                                      len(response.body), self.known_id, len(self.known)))

    def slowloris_run(self):
        """--slowloris connections, each sending one more byte of a request head every second for
        --slowloris-seconds, then closing. Records how many vaultd closed first, and when."""
        time.sleep(min(3.0, self.args.duration / 10))
        target = ("GET /v1/forces/%s/datasets/%s/current?use_case=%s HTTP/1.1\r\nHost: %s:%d\r\nX-Slow: " % (
            self.force, self.dataset, self.use_case, self.host, self.port)).encode()
        connections = []
        started = time.monotonic()
        for index in range(self.args.slowloris):
            try:
                sock = self.connect(timeout=5)
                sock.setblocking(False)
                connections.append([sock, 0, None])
            except (OSError, ssl.SSLError):
                self.slowloris["connect failed"] += 1
        with self.lock:
            self.sent += len(connections)
            self.categories["slowloris"] += len(connections)
        payload = target + b"a" * 100000
        end = min(self.deadline, started + self.args.slowloris_seconds)
        while time.monotonic() < end and not self.stop.is_set():
            for entry in connections:
                sock, position, closed = entry
                if closed is not None:
                    continue
                try:
                    sock.send(payload[position:position + 1])
                    entry[1] += 1
                    readable, _, _ = select.select([sock], [], [], 0)
                    if readable:
                        data = sock.recv(4096)
                        if not data:
                            raise ConnectionResetError("closed")
                        entry[2] = ("answered", time.monotonic() - started, data[:60])
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    pass
                except (OSError, ssl.SSLError):
                    entry[2] = ("closed by vaultd", time.monotonic() - started, b"")
            time.sleep(1.0)
        for sock, position, closed in connections:
            if closed is None:
                self.slowloris["still open after %ds (closed by the fuzzer)" % self.args.slowloris_seconds] += 1
            else:
                self.slowloris["%s after %d-%ds" % (closed[0], int(closed[1]) // 5 * 5, int(closed[1]) // 5 * 5 + 5)] \
                    += 1
                if closed[0] == "answered" and not closed[2].startswith(b"HTTP/1.1 4"):
                    self.violate("slowloris", None, "a slow, unfinished request head was answered with %r" % (
                        closed[2],))
            try:
                sock.close()
            except OSError:
                pass

    def bursts(self):
        """--bursts times, --burst connections at once, each making one quick request."""
        if self.args.bursts <= 0:
            return
        interval = self.args.duration / (self.args.bursts + 1)
        for burst in range(self.args.bursts):
            wake = self.start + interval * (burst + 1)
            while time.monotonic() < wake and not self.stop.is_set():
                time.sleep(0.2)
            if self.stop.is_set() or time.monotonic() >= self.deadline:
                return
            rng = random.Random("%d/burst/%d" % (self.seed, burst))
            threads = []
            for index in range(self.args.burst):
                request = Request("GET", rng.choice(["/healthz", "/v1/forces/%s/keys" % self.force,
                                                     "/v1/forces/%s/use-cases" % self.force,
                                                     "/v1/forces/%s/datasets/%s/current?use_case=%s" % (
                                                         self.force, self.dataset, self.use_case)]),
                                  [("Host", "%s:%d" % (self.host, self.port)), ("Connection", "close")],
                                  category="burst")
                self.pick_principal(rng, request)
                if request.cert == "foreign":
                    request.cert = None
                threads.append(threading.Thread(target=self.send, args=(request, 60.0), daemon=True))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=90)

    # -- after the run -----------------------------------------------------------------------------------------

    def final_checks(self):
        if not self.pid_alive():
            self.violate("vaultd died", None, "vaultd's process %d is gone after the run" % self.args.vaultd_pid)
            return
        for attempt in range(3):
            elapsed, error = self.health_once()
            if error:
                self.violate("health", None, "/healthz after the run: %s" % error)
        request, response = self.call("GET", "/readyz", None)
        if response is not None and response.status != 200:
            self.violate("ready", request, "/readyz after the run: %d %r" % (response.status, response.body[:200]))
        # The known extract: still the only one of its dataset, still the same bytes.
        listed = self.list_extracts(self.dataset)
        if listed is not None:
            ids = sorted(item["extract"] for item in listed)
            if ids != [self.known_id]:
                self.violate("known dataset", None, "after the run %s lists %s, expected only the known %s" % (
                    self.dataset, ids, self.known_id))
        self.check_known("after the run")
        archives = self.list_archives()
        archived = {item["extract"]: item for item in (archives or [])}
        if self.known_id in archived:
            self.violate("known dataset", None, "the known extract %s was archived" % self.known_id)
        # Every dataset an upload went to: only complete uploads (201) are listed, the current one reads back.
        datasets = set(self.completed_by_dataset) | (self.cut_datasets - {self.dataset})
        for dataset in sorted(datasets):
            if not DATASET_RE.fullmatch(dataset):
                continue  # a malformed dataset id: nothing can be listed there
            listed = self.list_extracts(dataset)
            if listed is None:
                continue
            ok = self.completed_by_dataset.get(dataset, set())
            for item in listed:
                if item["extract"] not in ok:
                    self.violate("half-visible upload", None, "%s lists extract %s (state %s, %s bytes), which no "
                                 "upload of the fuzzer completed" % (dataset, item["extract"], item.get("state"),
                                                                     item.get("plaintext_size")))
            current = [item for item in listed if item.get("state") == "current"]
            if ok and len(current) != 1:
                self.violate("lost upload", None, "%s had %d complete uploads but lists %d current extracts" % (
                    dataset, len(ok), len(current)))
            if ok and current:
                request, response = self.read_current(dataset)
                if response is None or response.status != 200:
                    self.violate("lost upload", request, "the current extract of %s does not read: %s" % (
                        dataset, response.status if response else "no answer"))
                else:
                    extract = response.header("x-vault-extract")
                    expected = self.completed.get(extract, (None, None, None))[2]
                    if expected is None or response.body != expected:
                        self.violate("data", request, "the current extract %s of %s does not read back as "
                                     "uploaded (%d bytes read)" % (extract, dataset, len(response.body)))
            for extract in ok:
                if extract not in {item["extract"] for item in listed} and extract not in archived \
                        and extract not in self.shredded:
                    self.violate("lost upload", None, "extract %s of %s (a complete upload, 201) is neither current, "
                                 "archived nor shredded by a request the fuzzer saw succeed; its audit records: %s" % (
                                     extract, dataset, self.audit_of(extract)))
        # vaultd's own count of what it answered, including answers to clients that had gone: no 5xx there either.
        request, response = self.call("GET", "/metrics", "ops")
        if response is None or response.status != 200:
            self.violate("check", request, "cannot read /metrics as ops: %s" % (
                response.status if response else "no answer"))
        else:
            for line in response.body.decode("utf-8", "replace").splitlines():
                match = re.match(r'vault_http_requests_total\{(.*)\}\s+([0-9.e+]+)$', line)
                if not match:
                    continue
                labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
                count = int(float(match.group(2)))
                self.server_statuses[labels.get("status", "?")] += count
                if labels.get("status", "").startswith("5") and count > 0:
                    self.violate("5xx (server side)", None, "vaultd's metrics count %d answers %s to %s %s" % (
                        count, labels.get("status"), labels.get("method"), labels.get("route")))
        for request, response in self.pending_reads:
            extract = response.header("x-vault-extract")
            if extract in self.completed:
                self.check_data(request, response)
            else:
                self.violate("unknown extract read", request, "read extract %s, which is neither the known one nor "
                             "one the fuzzer uploaded (201)" % extract)
        for extract, item in archived.items():
            if item.get("dataset") == self.dataset or extract in self.completed:
                continue
            self.violate("half-visible upload", None, "archive %s of %s was never a complete upload of the fuzzer"
                         % (extract, item.get("dataset")))

    def audit_of(self, extract):
        """What the force's audit trail says happened to `extract` (a diagnostic for a violation)."""
        request, response = self.call("GET", "/v1/forces/%s/audit" % self.force, "dpo", timeout=60.0)
        if response is None or response.status != 200:
            return "(audit unavailable)"
        events = []
        for line in response.body.decode("utf-8", "replace").splitlines():
            if extract in line:
                try:
                    record = json.loads(line)
                    events.append("%s %s by %s (%s)" % (record.get("action"), record.get("outcome"),
                                                        record.get("principal"),
                                                        (record.get("detail") or {}).get("request_id")))
                except ValueError:
                    continue
        return "; ".join(events[-6:]) or "none"

    def report(self):
        elapsed = time.monotonic() - self.start
        latencies = sorted(x for _, x in self.health if x is not None)
        print("api_fuzz: %d requests in %.1f s (%.0f/s), %d upload bytes, %d complete uploads, %d known reads" % (
            self.sent, elapsed, self.sent / max(elapsed, 0.001), self.upload_bytes, len(self.completed),
            self.known_reads))
        print("status codes: " + ", ".join("%d: %d" % kv for kv in sorted(self.status_counts.items())))
        print("vaultd's own count (vault_http_requests_total): " + (", ".join(
            "%s: %d" % kv for kv in sorted(self.server_statuses.items())) or "none"))
        print("outcomes without a status: " + (", ".join("%s: %d" % kv for kv in sorted(self.outcomes.items()))
                                               or "none"))
        print("categories: " + ", ".join("%s: %d" % kv for kv in sorted(self.categories.items())))
        print("routes: %d of %d operations sent, %d answered 2xx at least once%s" % (
            len(self.routes), len(self.operations), len(self.routes_ok),
            "; never 2xx: " + ", ".join(sorted(set(self.routes) - set(self.routes_ok))) if len(self.routes_ok) < len(
                self.routes) else ""))
        if latencies:
            print("/healthz: %d probes, median %.3f s, max %.3f s (bound %.1f s)" % (
                len(self.health), latencies[len(latencies) // 2], latencies[-1], self.args.health_timeout))
        print("slowloris: " + (", ".join("%s: %d" % kv for kv in sorted(self.slowloris.items())) or "none"))
        if self.violations and self.args.violations_out:
            with open(self.args.violations_out, "w", encoding="utf-8") as handle:
                for kind, request, detail in self.violations:
                    handle.write(json.dumps({"kind": kind, "detail": detail, "request": request}) + "\n")
        if self.violations:
            kinds = collections.Counter(kind for kind, _, _ in self.violations)
            print("violations (%d): %s" % (len(self.violations), ", ".join("%s: %d" % kv for kv in kinds.items())))
            shown = set()
            for kind, request, detail in self.violations:
                key = (kind, detail[:60])
                if key in shown or len(shown) >= 25:
                    continue
                shown.add(key)
                print("- %s: %s\n    request: %s" % (kind, detail, request))
            print("VERDICT: FAIL seed %d: %d violations in %d requests" % (self.seed, len(self.violations),
                                                                           self.sent))
            return 1
        print("VERDICT: PASS seed %d: %d requests, no violation" % (self.seed, self.sent))
        return 0


DATASET_RE = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")


def role_of(name):
    """The role a token name stands for: its ROLE_NAMES prefix ("custodian2" is a custodian); None otherwise (another
    force's principals, no token, a forged one)."""
    for role in ROLE_NAMES:
        if (name or "").startswith(role):
            return role
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addr", required=True, help="https://127.0.0.1:PORT")
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--token", action="append", default=[], metavar="NAME=FILE",
                        help="a principal's token file; uploader, analyst, custodian, ops and dpo are required, more "
                             "(another force's principals) are used at random")
    parser.add_argument("--principal-id", action="append", default=[], metavar="NAME=ID",
                        help="the principal id behind a token name (for use case bodies)")
    parser.add_argument("--client-cert", help="a client certificate of a configured principal (with --client-key)")
    parser.add_argument("--client-key")
    parser.add_argument("--foreign-cert", help="a client certificate from another CA (with --foreign-key)")
    parser.add_argument("--foreign-key")
    parser.add_argument("--force", required=True)
    parser.add_argument("--other-force", required=True)
    parser.add_argument("--dataset", required=True, help="the dataset of the known extract")
    parser.add_argument("--use-case", required=True, help="a use case naming the analyst and covering the datasets")
    parser.add_argument("--fuzz-datasets", required=True, help="comma-separated datasets complete uploads go to")
    parser.add_argument("--known-file", required=True, help="the bytes of the known extract")
    parser.add_argument("--sealed-file", help="the known extract sealed for its dataset (only sent broken)")
    parser.add_argument("--vaultd-pid", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--max-requests", type=int, default=50000)
    parser.add_argument("--max-upload-bytes", type=int, default=48 << 20)
    parser.add_argument("--max-rotations", type=int, default=3)
    parser.add_argument("--health-timeout", type=float, default=5.0)
    parser.add_argument("--slowloris", type=int, default=16)
    parser.add_argument("--slowloris-seconds", type=float, default=25.0)
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--violations-out", help="write every violation (redacted) to this file as NDJSON")
    parser.add_argument("--bursts", type=int, default=3)
    args = parser.parse_args()
    for name, value, low, high in [("--duration", args.duration, 1, 600), ("--workers", args.workers, 1, 32),
                                   ("--slowloris", args.slowloris, 0, 256), ("--burst", args.burst, 0, 512),
                                   ("--bursts", args.bursts, 0, 20),
                                   ("--slowloris-seconds", args.slowloris_seconds, 0, 600)]:
        if not low <= value <= high:
            print("api_fuzz: %s must be within %s..%s" % (name, low, high), file=sys.stderr)
            return 2
    try:
        fuzzer = Fuzzer(args)
    except (SetupError, OSError, ssl.SSLError) as error:
        print("api_fuzz: setup: %s" % error, file=sys.stderr)
        return 2
    print("api_fuzz: seed %d (rerun with --seed %d)" % (fuzzer.seed, fuzzer.seed), flush=True)
    random.seed(fuzzer.seed)
    # A watchdog: whatever happens, the run ends.
    hard_limit = args.duration + 150

    def watchdog():
        time.sleep(hard_limit)
        print("VERDICT: FAIL seed %d: the fuzzer did not finish within %d s (vaultd stopped answering?)" % (
            fuzzer.seed, hard_limit), flush=True)
        os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        return fuzzer.run()
    except SetupError as error:
        print("api_fuzz: setup: %s" % fuzzer.redact(str(error)), file=sys.stderr)
        print("VERDICT: FAIL seed %d: setup: %s" % (fuzzer.seed, fuzzer.redact(str(error))))
        return 1


if __name__ == "__main__":
    sys.exit(main())
