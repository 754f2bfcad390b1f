"""A real SOAP service for Switchboard's integration tests, written with spyne.

It serves one service, `CrmService`, as SOAP 1.1 at `/soap11` and as SOAP 1.2 at `/soap12`
(each with its WSDL at `?wsdl`), on 127.0.0.1 and the port the OS picks. It writes that port
to the file named by `--port-file` once it listens, and stops on SIGTERM or SIGINT.

Operations (namespace `urn:switchboard:test:crm`):

- `Greet(name, times)`: a simple call, `times` greetings of `name` joined by `; `.
- `CreateOrder(order)`: nested types and arrays in, nested types and arrays out.
- `Fail(kind)`: a client fault (`Client.BadInput`, SOAP 1.2 `Sender`) for `kind=client`, a
  server fault (`Server.Busy`, 1.2 `Receiver`) otherwise.
- `Flaky(key)`: a server fault the first time a key is seen, then a result.
- `Whoami()`: the user of the request's WS-Security `UsernameToken`, checked against
  user `crm-ws` with password `pa&ss<word>` (PasswordText or PasswordDigest with nonce and
  created time, within 5 minutes, each nonce once); a client fault otherwise.
"""

import argparse
import base64
import datetime
import hashlib
import logging
import os
import signal
import socketserver
import sys
import threading
from decimal import Decimal as D
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from spyne import (
    Application,
    Array,
    Boolean,
    ComplexModel,
    Decimal,
    Fault,
    Integer,
    ServiceBase,
    Unicode,
    rpc,
)
from spyne.protocol.soap import Soap11, Soap12
from spyne.server.wsgi import WsgiApplication

TNS = "urn:switchboard:test:crm"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
PASSWORD_DIGEST = (
    "http://docs.oasis-open.org/wss/2004/01/"
    "oasis-200401-wss-username-token-profile-1.0#PasswordDigest"
)
WS_USER = "crm-ws"
WS_PASSWORD = "pa&ss<word>"

_lock = threading.Lock()
_flaky_seen = {}
_nonces = set()


class Address(ComplexModel):
    __namespace__ = TNS
    street = Unicode
    city = Unicode
    zip = Unicode


class Line(ComplexModel):
    __namespace__ = TNS
    sku = Unicode
    quantity = Integer
    price = Decimal


class Order(ComplexModel):
    __namespace__ = TNS
    customer = Unicode
    shipping = Address
    lines = Array(Line)
    rush = Boolean


class Receipt(ComplexModel):
    __namespace__ = TNS
    order_id = Unicode
    customer = Unicode
    city = Unicode
    total = Decimal
    line_count = Integer
    skus = Array(Unicode)
    rush = Boolean


class CrmService(ServiceBase):
    @rpc(Unicode, Integer, _returns=Unicode)
    def Greet(ctx, name, times):
        return "; ".join(["Hello, %s!" % name] * (times or 1))

    @rpc(Order, _returns=Receipt)
    def CreateOrder(ctx, order):
        lines = order.lines or []
        total = sum((D(l.quantity) * l.price for l in lines), D(0))
        return Receipt(
            order_id="SO-%s-%d" % (order.customer, len(lines)),
            customer=order.customer,
            city=order.shipping.city if order.shipping else None,
            total=total,
            line_count=len(lines),
            skus=[l.sku for l in lines],
            rush=bool(order.rush),
        )

    @rpc(Unicode, _returns=Unicode)
    def Fail(ctx, kind):
        if kind == "client":
            raise Fault(faultcode="Client.BadInput", faultstring="kind %s is refused" % kind)
        raise Fault(faultcode="Server.Busy", faultstring="the service is busy, try later")

    @rpc(Unicode, _returns=Unicode)
    def Flaky(ctx, key):
        with _lock:
            seen = _flaky_seen.get(key, 0)
            _flaky_seen[key] = seen + 1
        if seen == 0:
            raise Fault(faultcode="Server.Flaky", faultstring="first call for %s fails" % key)
        return "ok after %d" % (seen + 1)

    @rpc(_returns=Unicode)
    def Whoami(ctx):
        return check_username_token(ctx.in_header_doc or [])


def check_username_token(headers):
    """The user of a valid UsernameToken in `headers` (lxml elements), or a client fault."""

    def refuse(why):
        raise Fault(faultcode="Client.Authentication", faultstring=why)

    security = next((h for h in headers if h.tag == "{%s}Security" % WSSE), None)
    if security is None:
        refuse("no wsse:Security header")
    token = security.find("{%s}UsernameToken" % WSSE)
    if token is None:
        refuse("no UsernameToken")
    user = token.findtext("{%s}Username" % WSSE)
    password = token.find("{%s}Password" % WSSE)
    nonce = token.findtext("{%s}Nonce" % WSSE)
    created = token.findtext("{%s}Created" % WSU)
    if user != WS_USER or password is None:
        refuse("unknown user")
    if not nonce or not created:
        refuse("a UsernameToken needs a nonce and a created time")
    when = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    age = abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds())
    if age > 300:
        refuse("created time out of range")
    with _lock:
        if nonce in _nonces:
            refuse("nonce replayed")
        _nonces.add(nonce)
    if password.get("Type") == PASSWORD_DIGEST:
        raw = base64.b64decode(nonce) + created.encode() + WS_PASSWORD.encode()
        expected = base64.b64encode(hashlib.sha1(raw).digest()).decode()
        if password.text != expected:
            refuse("wrong password digest")
        return "%s (digest)" % user
    if password.text != WS_PASSWORD:
        refuse("wrong password")
    return "%s (text)" % user


def application(protocol):
    app = Application(
        [CrmService],
        tns=TNS,
        name="CrmService",
        in_protocol=protocol(validator="lxml"),
        out_protocol=protocol(),
    )
    return WsgiApplication(app)


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()
    # Faults are the point of some operations; spyne would log each one with a traceback.
    logging.basicConfig(level=logging.CRITICAL)
    soap11 = application(Soap11)
    soap12 = application(Soap12)

    def route(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/soap11":
            return soap11(environ, start_response)
        if path == "/soap12":
            return soap12(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such service\n"]

    server = make_server(
        "127.0.0.1", 0, route, server_class=ThreadingServer, handler_class=QuietHandler
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_port))
    os.replace(tmp, args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
