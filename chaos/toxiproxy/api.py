"""Toxiproxy 2.x's HTTP API on aiohttp: the same routes, JSON, status codes and error bodies.

Bodies are decoded the way Go's encoding/json decodes them into Toxiproxy's structs: the first
JSON value of the body counts (trailing bytes are ignored), keys match field names without
regard to case, unknown keys are ignored, `null` leaves a field as it was, and a value of the
wrong JSON type is a 400 "bad request body: json: cannot unmarshal ...".
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from chaos.toxiproxy.engine import (
    DIRECTIONS,
    AlreadyStarted,
    ApiError,
    Proxy,
    ProxyCollection,
)
from chaos.toxiproxy.toxics import INT64_MAX, INT64_MIN, TOXIC_TYPES, ToxicSpec, to_float32

VERSION = "2.12.0"  # the Toxiproxy release whose API this follows

COLLECTION = web.AppKey("collection", ProxyCollection)


# -- responses ----------------------------------------------------------------------------------

def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_dumps(value),
                        headers={"Content-Type": "application/json"})


def error_response(exc: ApiError) -> web.Response:
    # Go answers with http.Error: the JSON as text/plain, with a newline.
    body = _dumps({"error": exc.message, "status": exc.status}) + b"\n"
    return web.Response(status=exc.status, body=body,
                        headers={"Content-Type": "text/plain; charset=utf-8",
                                 "X-Content-Type-Options": "nosniff"})


def no_content() -> web.Response:
    return web.Response(status=204)


# -- decoding like encoding/json ------------------------------------------------------------------

def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _bad_body(detail: str) -> ApiError:
    return ApiError(f"bad request body: {detail}", 400)


def _type_error(value: Any, where: str, gotype: str) -> ApiError:
    kind = _json_type(value)
    if kind == "number" and gotype.startswith("int"):
        kind = f"number {json.dumps(value)}"
    return _bad_body(f"json: cannot unmarshal {kind} into Go {where} of type {gotype}")


async def decode_body(request: web.Request) -> Any:
    raw = await request.read()
    text = raw.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        return _bad_body_raise("EOF")
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text):
            return _bad_body_raise("unexpected EOF")
        return _bad_body_raise(f"invalid character {text[exc.pos]!r} {exc.msg.lower()}")
    return value


def _bad_body_raise(detail: str) -> Any:
    raise _bad_body(detail)


def _fold(obj: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The values of `fields` in `obj`, keys matched case-insensitively, later keys winning,
    nulls skipped (Go leaves the field as it was)."""
    lower = {f.lower(): f for f in fields}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        field = key if key in fields else lower.get(key.lower())
        if field is not None and value is not None:
            out[field] = value
    return out


def _want(value: Any, pytype: type, struct: str, field: str, gotype: str) -> Any:
    ok = isinstance(value, pytype) and not (pytype is not bool and isinstance(value, bool))
    if pytype is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise _type_error(value, f"struct field {struct}.{field}", gotype)
    return value


def _object(value: Any, gotype: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _type_error(value, "value", gotype)
    return value


def decode_proxy(value: Any, defaults: dict[str, Any], struct: str = "Proxy",
                 gotype: str = "toxiproxy.Proxy") -> dict[str, Any]:
    fields = _fold(_object(value, gotype), ("name", "listen", "upstream", "enabled"))
    out = dict(defaults)
    for field in ("name", "listen", "upstream"):
        if field in fields:
            out[field] = _want(fields[field], str, struct, field, "string")
    if "enabled" in fields:
        out["enabled"] = _want(fields["enabled"], bool, struct, "enabled", "bool")
    return out


def decode_attributes(type_: str, value: Any, into: dict[str, int]) -> dict[str, int]:
    struct, names = TOXIC_TYPES[type_]
    if value is not None and not isinstance(value, dict):
        raise _type_error(value, f"struct field {struct}.attributes", f"toxics.{struct}")
    out = dict(into)
    for field, item in _fold(value or {}, names).items():
        if not isinstance(item, int) or isinstance(item, bool) \
                or not INT64_MIN <= item <= INT64_MAX:
            raise _type_error(item, f"struct field {struct}.attributes.{field}", "int64")
        out[field] = item
    return out


def decode_toxicity(value: Any) -> float:
    toxicity = _want(value, float, "ToxicWrapper", "toxicity", "float32")
    if math.isinf(toxicity) or math.isnan(toxicity) or abs(toxicity) > 3.4028234663852886e38:
        raise _type_error(value, "struct field ToxicWrapper.toxicity", "float32")
    return to_float32(float(toxicity))


# -- handlers ---------------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _collection(request: web.Request) -> ProxyCollection:
    return request.app[COLLECTION]


def _proxies_json(proxies: list[Proxy]) -> list[dict[str, Any]] | None:
    return [p.to_json() for p in proxies] or None  # Go marshals the empty slice as null


async def proxy_index(request: web.Request) -> web.Response:
    proxies = _collection(request).proxies
    return json_response({name: proxies[name].to_json() for name in sorted(proxies)})


async def proxy_create(request: web.Request) -> web.Response:
    collection = _collection(request)
    data = decode_proxy(await decode_body(request),
                        {"name": "", "listen": "", "upstream": "", "enabled": True})
    if not data["name"]:
        raise ApiError("missing required field: name", 400)
    if not data["upstream"]:
        raise ApiError("missing required field: upstream", 400)
    async with collection.lock:
        proxy = Proxy(data["name"], data["listen"], data["upstream"])
        await collection.add(proxy, data["enabled"])
    return json_response(proxy.to_json(), 201)


async def populate_from(collection: ProxyCollection, value: Any, done: list[Proxy]) -> None:
    """Go's PopulateJson: check every entry, then create or replace each in turn (appending
    to `done`); the /populate endpoint and `--config` share it."""
    if not isinstance(value, list):
        raise _type_error(value, "value", "[]struct { toxiproxy.Proxy; Enabled *bool }")
    entries = []
    for i, item in enumerate(value):
        entry = decode_proxy(item, {"name": "", "listen": "", "upstream": "", "enabled": True})
        if not entry["name"]:
            raise ApiError(f"missing required field: name at proxy {i + 1}", 400)
        if not entry["upstream"]:
            raise ApiError(f"missing required field: upstream at proxy {i + 1}", 400)
        entries.append(entry)
    async with collection.lock:
        for entry in entries:
            proxy = Proxy(entry["name"], entry["listen"], entry["upstream"])
            done.append(await collection.add_or_replace(proxy, entry["enabled"]))


async def populate(request: web.Request) -> web.Response:
    done: list[Proxy] = []
    try:
        await populate_from(_collection(request), await decode_body(request), done)
    except ApiError as exc:
        return json_response({"error": exc.message, "status": exc.status,
                              "proxies": _proxies_json(done)}, exc.status)
    return json_response({"proxies": _proxies_json(done)}, 201)


async def proxy_show(request: web.Request) -> web.Response:
    proxy = _collection(request).get(request.match_info["proxy"])
    return json_response(proxy.to_json())


async def proxy_update(request: web.Request) -> web.Response:
    collection = _collection(request)
    proxy = collection.get(request.match_info["proxy"])
    data = decode_proxy(await decode_body(request),
                        {"name": proxy.name, "listen": proxy.listen,
                         "upstream": proxy.upstream, "enabled": proxy.enabled})
    async with collection.lock:
        await proxy.update(data["listen"], data["upstream"], data["enabled"])
    return json_response(proxy.to_json())


async def proxy_delete(request: web.Request) -> web.Response:
    collection = _collection(request)
    async with collection.lock:
        await collection.remove(request.match_info["proxy"])
    return no_content()


async def reset(request: web.Request) -> web.Response:
    collection = _collection(request)
    async with collection.lock:
        for proxy in list(collection.proxies.values()):
            try:
                await proxy.start()
            except AlreadyStarted:
                pass
            proxy.toxics.reset()
    return no_content()


async def toxic_index(request: web.Request) -> web.Response:
    proxy = _collection(request).get(request.match_info["proxy"])
    return json_response([t.to_json() for t in proxy.toxics.all()])


async def toxic_create(request: web.Request) -> web.Response:
    proxy = _collection(request).get(request.match_info["proxy"])
    value = _object(await decode_body(request), "toxics.ToxicWrapper")
    fields = _fold(value, ("name", "type", "stream", "toxicity", "attributes"))
    name = fields.get("name", "")
    type_ = fields.get("type", "")
    stream = fields.get("stream", "downstream")
    for field, item in (("name", name), ("type", type_), ("stream", stream)):
        _want(item, str, "ToxicWrapper", field, "string")
    toxicity = decode_toxicity(fields["toxicity"]) if "toxicity" in fields else 1.0
    attributes = fields.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise _type_error(attributes, "struct field ToxicWrapper.attributes", "toxics.Toxic")
    direction = stream.lower()
    if direction not in DIRECTIONS:
        raise ApiError("stream was invalid, can be either upstream or downstream", 400)
    if not name:
        name = f"{type_}_{stream}"
    if type_ not in TOXIC_TYPES:
        raise ApiError("invalid toxic type", 400)
    if proxy.toxics.find(name) is not None:
        raise ApiError("toxic already exists", 409)
    attrs = decode_attributes(type_, attributes, {f: 0 for f in TOXIC_TYPES[type_][1]})
    spec = ToxicSpec(name, type_, stream, direction, toxicity, attrs)
    proxy.toxics.add(spec)
    return json_response(spec.to_json())


async def toxic_show(request: web.Request) -> web.Response:
    proxy = _collection(request).get(request.match_info["proxy"])
    spec = proxy.toxics.find(request.match_info["toxic"])
    if spec is None:
        raise ApiError("toxic not found", 404)
    return json_response(spec.to_json())


async def toxic_update(request: web.Request) -> web.Response:
    proxy = _collection(request).get(request.match_info["proxy"])
    spec = proxy.toxics.find(request.match_info["toxic"])
    if spec is None:
        raise ApiError("toxic not found", 404)
    value = _object(await decode_body(request), "struct { Attributes interface {}; "
                                                "Toxicity float32 }")
    fields = _fold(value, ("attributes", "toxicity"))
    attrs = decode_attributes(spec.type, fields.get("attributes"), spec.attributes)
    toxicity = decode_toxicity(fields["toxicity"]) if "toxicity" in fields else spec.toxicity
    spec.attributes = attrs
    spec.toxicity = toxicity
    proxy.toxics.updated(spec)
    return json_response(spec.to_json())


async def toxic_delete(request: web.Request) -> web.Response:
    proxy = _collection(request).get(request.match_info["proxy"])
    spec = proxy.toxics.find(request.match_info["toxic"])
    if spec is None:
        raise ApiError("toxic not found", 404)
    proxy.toxics.remove(spec)
    return no_content()


async def version(request: web.Request) -> web.Response:
    return web.Response(body=f'{{"version": "{VERSION}"}}\n'.encode(),
                        headers={"Content-Type": "application/json;charset=utf-8"})


# -- middleware and app -------------------------------------------------------------------------

@web.middleware
async def go_like(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors and refusals as the Go server words them."""
    if request.headers.get("User-Agent", "").startswith("Mozilla/"):
        return web.Response(status=403, body=b"User agent not allowed\n",
                            headers={"Content-Type": "text/plain; charset=utf-8",
                                     "X-Content-Type-Options": "nosniff"})
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPMethodNotAllowed:
        return web.Response(status=405)
    except web.HTTPNotFound:
        return web.Response(status=404, body=b"404 page not found\n",
                            headers={"Content-Type": "text/plain; charset=utf-8",
                                     "X-Content-Type-Options": "nosniff"})
    except OSError as exc:  # not an API error: Go answers 500 with the error's text
        return error_response(ApiError(str(exc), 500))


def make_app(collection: ProxyCollection | None = None) -> web.Application:
    app = web.Application(middlewares=[go_like])
    app[COLLECTION] = collection if collection is not None else ProxyCollection()
    r = app.router
    r.add_post("/reset", reset)
    r.add_get("/proxies", proxy_index, allow_head=False)
    r.add_post("/proxies", proxy_create)
    r.add_post("/populate", populate)
    r.add_get("/proxies/{proxy}", proxy_show, allow_head=False)
    r.add_post("/proxies/{proxy}", proxy_update)
    r.add_patch("/proxies/{proxy}", proxy_update)
    r.add_delete("/proxies/{proxy}", proxy_delete)
    r.add_get("/proxies/{proxy}/toxics", toxic_index, allow_head=False)
    r.add_post("/proxies/{proxy}/toxics", toxic_create)
    r.add_get("/proxies/{proxy}/toxics/{toxic}", toxic_show, allow_head=False)
    r.add_post("/proxies/{proxy}/toxics/{toxic}", toxic_update)
    r.add_patch("/proxies/{proxy}/toxics/{toxic}", toxic_update)
    r.add_delete("/proxies/{proxy}/toxics/{toxic}", toxic_delete)
    r.add_get("/version", version, allow_head=False)
    return app
