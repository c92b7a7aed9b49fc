"""Content-Security-Policy and Permissions-Policy on every response.

The pages load nothing from elsewhere (noVNC and the API documentation come from our own
static files), so the policy allows this origin only: no inline script or style, no eval,
no plugins, no framing, forms and the base URL kept here. Websockets (live status, the
viewer) go to the page's own host. HSTS, nosniff, Referrer-Policy and COOP are Django's
SecurityMiddleware (settings.py, "HTTPS only").

A page that cannot live with the policy yet gets a named exception (`PAGE_EXCEPTIONS`),
never a looser policy for every page.
"""

from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse

Directives = dict[str, tuple[str, ...]]

POLICY: Directives = {
    "default-src": ("'self'",),
    "script-src": ("'self'",),
    "style-src": ("'self'",),
    # data: for the small images CSS and noVNC's cursors are made of.
    "img-src": ("'self'", "data:"),
    "font-src": ("'self'", "data:"),
    "connect-src": ("'self'",),  # + the page's own ws:// or wss:// host, per request
    "object-src": ("'none'",),
    "base-uri": ("'none'",),
    "form-action": ("'self'",),
    "frame-ancestors": ("'none'",),  # as X-Frame-Options: DENY
}

#: Extra sources for the pages (URL names) that need them, and why.
PAGE_EXCEPTIONS: dict[str, Directives] = {
    # Swagger UI and ReDoc (drf-spectacular-sidecar) style their elements inline; ReDoc
    # searches in a worker it makes from a blob. Their scripts are files.
    "api-docs": {"style-src": ("'unsafe-inline'",)},
    "api-redoc": {"style-src": ("'unsafe-inline'",), "worker-src": ("'self'", "blob:")},
}

#: Browser features no page uses are off; full screen is the viewer's button.
PERMISSIONS_POLICY = ", ".join(
    [
        "accelerometer=()",
        "autoplay=()",
        "camera=()",
        "display-capture=()",
        "encrypted-media=()",
        "fullscreen=(self)",
        "geolocation=()",
        "gyroscope=()",
        "hid=()",
        "magnetometer=()",
        "microphone=()",
        "midi=()",
        "payment=()",
        "picture-in-picture=()",
        "publickey-credentials-get=()",
        "screen-wake-lock=()",
        "serial=()",
        "usb=()",
        "xr-spatial-tracking=()",
    ]
)


def _merged(extra: Directives) -> Directives:
    merged = dict(POLICY)
    for directive, sources in extra.items():
        merged[directive] = merged.get(directive, POLICY["default-src"]) + sources
    return merged


_POLICIES: dict[str | None, Directives] = {
    None: POLICY,
    **{name: _merged(extra) for name, extra in PAGE_EXCEPTIONS.items()},
}


def content_security_policy(request: HttpRequest) -> str:
    """The policy for this request's page, its websockets allowed to the same host."""
    match = request.resolver_match
    name = match.url_name if match is not None else None
    directives = _POLICIES.get(name, POLICY)
    try:
        host = request.get_host()
    except DisallowedHost:  # the answer is a 400 already; 'self' is enough for it
        host = ""
    parts = []
    for directive, sources in directives.items():
        if directive == "connect-src" and host:
            scheme = "wss" if request.is_secure() else "ws"
            sources = (*sources, f"{scheme}://{host}")
        parts.append(f"{directive} {' '.join(sources)}")
    return "; ".join(parts)


class SecurityHeadersMiddleware:
    """Sets the two headers unless a view set its own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = content_security_policy(request)
        response.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response
