"""Serving a release over the network: openpi's websocket + msgpack protocol (server, codec, client)."""
