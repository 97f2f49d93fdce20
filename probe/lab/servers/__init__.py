"""The fake Internet's servers: DNS, HTTP(S), Telegram-like MTProto, plain TCP,
hostile peers and a TLS-intercepting proxy.

They serve the engine's tests on loopback and the censorship lab inside network
namespaces, so every server takes the addresses it binds. All are asyncio
servers with ``start()``/``stop()`` (and ``async with``); each bounds its
connections, idle time and buffers (``stream.Limits``).

``python -m probe.lab.servers --config FILE.json --duration SECONDS`` runs a
set of them from JSON (``fleet.Fleet``)::

    {
      "limits": {"max_connections": 256, "idle_timeout": 15, "lifetime": 120,
                 "handshake_timeout": 10, "max_request": 1048576},
      "servers": [
        {"kind": "dns", "listen": ["198.51.100.53:53", "[2001:db8::53]:53"],
         "zone": {"www.example.org": {"A": ["203.0.113.10"], "AAAA": "2001:db8::10"},
                  "alias.example.org": {"CNAME": "www.example.org"}},
         "behaviours": {"blocked.example": "nxdomain",
                        "*.forged.example": {"forge": ["10.10.34.35"], "ttl": 60},
                        "*": "answer"},
         "behaviour_file": "/run/lab/dns-behaviours.json", "ttl": 300},
        {"kind": "https", "listen": ["203.0.113.10:443"],
         "certificates": {"www.example.org": {"cert": "leaves/www.example.org.pem",
                                              "key": "leaves/www.example.org.key"}},
         "default_certificate": "www.example.org",
         "unknown_sni": "default | unrecognized_name | handshake_failure",
         "titles": {"www.example.org": "Example"}, "download_size": 4194304,
         "redirects": {"/old": "https://www.example.org/"}, "server_header": "nginx"},
        {"kind": "http", "listen": ["203.0.113.10:80"], "titles": {}, "download_size": 4194304},
        {"kind": "mtproto", "listen": ["203.0.113.50:443", "203.0.113.50:80"]},
        {"kind": "tcp", "listen": ["203.0.113.60:5222"],
         "mode": "echo | silent | reset | reset_on_accept | eof"},
        {"kind": "mitm", "listen": ["198.51.100.1:443"],
         "ca": {"cert": "roots/censor.pem", "key": "roots/censor.key"},
         "upstream": "203.0.113.10:443", "upstreams": {"www.example.org": "203.0.113.10:443"},
         "original_destination": false, "upstream_tls": true, "upstream_ca": null},
        {"kind": "stun", "listen": ["203.0.113.70:3478", "203.0.113.70:596"],
         "echo": true, "answer_first": null, "forge": null,
         "turn": "challenge | open | silent"},
        {"kind": "quic", "listen": ["203.0.113.10:443"],
         "certificate": {"cert": "leaves/www.example.org.pem",
                         "key": "leaves/www.example.org.key"},
         "title": "HTTP/3 works", "body_size": null}
      ]
    }

Every server also takes its own ``"limits"``. Behaviours are ``answer``,
``nxdomain``, ``servfail``, ``refused``, ``drop`` or ``{"forge": ADDRESSES}``;
the behaviour file holds the same object as ``behaviours`` and its entries win.
``stun`` answers Binding and (unauthenticated) TURN Allocate requests and echoes
other datagrams; ``answer_first: N`` cuts each flow after N datagrams, ``forge``
adds a second Binding Success mapping to that address (see ``servers/stun.py``).
``quic`` is an HTTP/3 origin (aioquic); ``body_size`` serves that many bytes.
"""

from probe.lab.servers.config import ConfigError
from probe.lab.servers.dns import DnsBehaviour, DnsServer, answer_query
from probe.lab.servers.fleet import Fleet, build_server
from probe.lab.servers.http import TELEGRAM_SITE, HttpServer, HttpSite
from probe.lab.servers.https import HttpsServer
from probe.lab.servers.mitm import MitmProxy
from probe.lab.servers.mtproto import MtprotoServer
from probe.lab.servers.quic import QuicHttpServer
from probe.lab.servers.stream import Limits, Server, StreamServer, serve_until
from probe.lab.servers.stun import StunServer
from probe.lab.servers.tcp import TcpServer

__all__ = [
    "TELEGRAM_SITE",
    "ConfigError",
    "DnsBehaviour",
    "DnsServer",
    "Fleet",
    "HttpServer",
    "HttpSite",
    "HttpsServer",
    "Limits",
    "MitmProxy",
    "MtprotoServer",
    "QuicHttpServer",
    "Server",
    "StreamServer",
    "StunServer",
    "TcpServer",
    "answer_query",
    "build_server",
    "serve_until",
]
