"""Image URLs that a request names, fetched for `specdec serve` within limits.

Only http and https, redirects included (never file:, ftp: or data: behind a redirect); at most
`MAX_IMAGE_BYTES`, refused from Content-Length before reading when the server says so; the whole
fetch within `FETCH_TIMEOUT` seconds; no proxy from the environment. `specdec serve --no-fetch`
refuses every URL that is not a data: URL. Runs off the event loop (app.py renders prompts in a
thread); every failure is one `ApiError` 400 line.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.parse
import urllib.request

from .api import ApiError

MAX_IMAGE_BYTES = 20 * 2**20
FETCH_TIMEOUT = 10.0  # seconds for the whole fetch, redirects and body included
SCHEMES = ("http", "https")


class _RedirectHttpOnly(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in SCHEMES:
            raise urllib.error.URLError("redirected to a URL that is not http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        _RedirectHttpOnly(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def fetch_image(url: str, where: str) -> bytes:
    """The bytes at an http(s) URL, or ApiError 400 saying why not (too big, too slow, HTTP error)."""
    if urllib.parse.urlsplit(url).scheme.lower() not in SCHEMES:
        raise ApiError(400, f"'{where}' must be an http(s) or data: URL", param=where)
    deadline = time.monotonic() + FETCH_TIMEOUT
    limit = MAX_IMAGE_BYTES

    def fail(why: str) -> ApiError:
        return ApiError(400, f"'{where}': cannot fetch {url[:200]} ({why})", param=where)

    try:
        request = urllib.request.Request(url, headers={"User-Agent": "mlx-specdec", "Accept": "image/*"})
        with _opener().open(request, timeout=FETCH_TIMEOUT) as r:
            length = r.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise fail(f"{int(length)} bytes; the limit is {limit}")
            data = bytearray()
            while chunk := r.read(1 << 16):
                data.extend(chunk)
                if len(data) > limit:
                    raise fail(f"over the limit of {limit} bytes")
                if time.monotonic() > deadline:
                    raise fail(f"not done within {FETCH_TIMEOUT:g} s")
            return bytes(data)
    except urllib.error.HTTPError as e:  # urllib refuses a redirect to file: itself, as a 3xx HTTPError
        raise fail(
            f"HTTP {e.code}" + (", redirected to a URL that is not http(s)" if 300 <= e.code < 400 else "")
        ) from None
    except urllib.error.URLError as e:
        raise fail(" ".join(str(e.reason).split())[:200]) from None
    except TimeoutError:
        raise fail(f"no answer within {FETCH_TIMEOUT:g} s") from None
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise fail(" ".join(str(e).split())[:200] or type(e).__name__) from None
