"""Django settings for isard.

Every value comes from the environment (or a `.env` file next to `manage.py`), with
development defaults that let `./isardctl up` run on a single machine: SQLite, Redis on
localhost, the local libvirt daemon and a storage directory inside the checkout.
`.env.example` lists every variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

#: Secrets may be kept in files instead (Docker secrets, systemd credentials): with
#: `<NAME>_FILE=/run/secrets/...` set and `<NAME>` not, `<NAME>` is the file's content.
SECRET_VARIABLES = (
    "ISARD_SECRET_KEY",
    "DATABASE_URL",
    "REDIS_URL",
    "ISARD_HEALTH_TOKEN",
    "ISARD_LDAP_BIND_PASSWORD",
    "ISARD_METRICS_TOKEN",
)
for _name in SECRET_VARIABLES:
    _secret_file = os.environ.get(f"{_name}_FILE", "")
    if _secret_file and _name not in os.environ:
        try:
            os.environ[_name] = Path(_secret_file).read_text().strip()
        except OSError as _error:
            raise ImproperlyConfigured(
                f"{_name}_FILE={_secret_file}: cannot read it ({_error.strerror})."
            ) from _error

# Off unless asked for, the demo included: with it on, an unknown URL answers with every
# URL pattern and an error with the code and settings around it. (The tests run with it
# off as well: pytest-django turns it off.)
DEBUG = env.bool("ISARD_DEBUG", default=False)
#: Public (it is in the source): `manage.py check --deploy` warns while it is in use.
DEVELOPMENT_SECRET_KEY = "dev-insecure-change-me-in-production-0123456789abcdef"
SECRET_KEY = env.str("ISARD_SECRET_KEY", default=DEVELOPMENT_SECRET_KEY)
ALLOWED_HOSTS = env.list("ISARD_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("ISARD_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "isard",
    "accounts",
    "hypervisors",
    "templates_app",
    "desktops",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "isard.middleware.SecurityHeadersMiddleware",  # Content-Security-Policy and co.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Sync-only, so last: under Daphne (ASGI) Django runs every middleware outside it in
    # one worker thread; ahead of Messages and XFrame it made those run in async mode,
    # each hook a thread hop of its own: 8.5 -> 6.7 ms of CPU per dashboard request.
    "accounts.middleware.PasswordChangeRequiredMiddleware",
]

ROOT_URLCONF = "isard.urls"
WSGI_APPLICATION = "isard.wsgi.application"
ASGI_APPLICATION = "isard.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "isard" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'isard.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Daphne, the Celery worker and beat write to the same file: wait for the lock
    # instead of failing with "database is locked", and let readers run beside a writer.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Django's backend, with closed connections kept for the process's next thread: under
    # Daphne each request's thread opened (and closed) a connection of its own.
    DATABASES["default"]["ENGINE"] = "isard.db.sqlite3"
# PostgreSQL: a pool of connections per process (psycopg_pool, Django's "pool" option).
# Under Daphne each request runs in a thread of its own, and without a pool each opened
# a connection of its own: a new server process on PostgreSQL's side every time, which
# at 200 students cost more CPU than the pages themselves. Celery's Django fix-up closes
# the pool a prefork child inherited.
ISARD_DB_POOL_SIZE = env.int("ISARD_DB_POOL_SIZE", default=8)
if ISARD_DB_POOL_SIZE < 0:
    raise ImproperlyConfigured("ISARD_DB_POOL_SIZE must be 0 (no pool) or more.")
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and ISARD_DB_POOL_SIZE:
    if DATABASES["default"].get("CONN_MAX_AGE"):
        raise ImproperlyConfigured(
            "CONN_MAX_AGE (conn_max_age in DATABASE_URL) and the connection pool exclude "
            "each other: remove it, or set ISARD_DB_POOL_SIZE=0."
        )
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": ISARD_DB_POOL_SIZE,
        "timeout": 10,  # a request waits at most this long for a free connection
    }
# Idle SQLite connections each process keeps for reuse (0: open one per thread, as Django).
ISARD_SQLITE_POOL_SIZE = env.int("ISARD_SQLITE_POOL_SIZE", default=8)
if ISARD_SQLITE_POOL_SIZE < 0:
    raise ImproperlyConfigured("ISARD_SQLITE_POOL_SIZE must be 0 (no reuse) or more.")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("ISARD_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
# People sign in on the accounts pages (local or directory accounts, optionally a course
# code); the admin has its own login for staff.
LOGIN_URL = "accounts:sign-in"
LOGIN_REDIRECT_URL = "dashboard"  # a student signs in to see their desktops
# Sessions in the database, each request's read of its session in plain SQL.
SESSION_ENGINE = "isard.sessions"

# Redis serves three purposes: the Celery broker and result store, and the Channels layer.
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A broker that is down or hung must not hang the request that sends a task: sockets
# time out, and a publish is retried briefly (about a second in all) before the sender
# gets an error it turns into "the task queue is unreachable" (see README, "When things
# go wrong"). Workers reconnect on their own with the same bounded sockets.
ISARD_BROKER_SOCKET_TIMEOUT_SECONDS = env.float("ISARD_BROKER_SOCKET_TIMEOUT_SECONDS", default=3.0)
CELERY_BROKER_CONNECTION_TIMEOUT = ISARD_BROKER_SOCKET_TIMEOUT_SECONDS
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "socket_timeout": ISARD_BROKER_SOCKET_TIMEOUT_SECONDS,
    "socket_connect_timeout": ISARD_BROKER_SOCKET_TIMEOUT_SECONDS,
}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = CELERY_BROKER_TRANSPORT_OPTIONS
CELERY_REDIS_SOCKET_TIMEOUT = ISARD_BROKER_SOCKET_TIMEOUT_SECONDS
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = ISARD_BROKER_SOCKET_TIMEOUT_SECONDS
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # channels_redis blocks on BZPOPMIN for 5 s waiting for messages; redis-py 8 gives
        # sockets a 5 s read timeout by default, which killed every idle websocket
        # consumer. A longer read timeout still notices a Redis that stopped answering.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}]},
    },
}

# The machine running `./isardctl up` is registered as the first hypervisor.
ISARD_LOCAL_HYPERVISOR_NAME = env.str("ISARD_LOCAL_HYPERVISOR_NAME", default="local")
ISARD_LIBVIRT_URI = env.str("ISARD_LIBVIRT_URI", default="qemu:///system")
# "auto" boots a real guest under KVM and falls back to TCG ("qemu") if it does not come up.
ISARD_ACCELERATOR = env.str("ISARD_ACCELERATOR", default="auto")
ISARD_STORAGE_ROOT = Path(env.str("ISARD_STORAGE_ROOT", default=str(VAR_DIR / "storage")))
# Where `isardctl` unpacks the Debian kernel package for the demo guest ("/" if installed).
ISARD_GUEST_KERNEL_ROOT = Path(
    env.str("ISARD_GUEST_KERNEL_ROOT", default=str(VAR_DIR / "guest-kernel"))
)
# Deleted desktops and templates wait this many days in the recycle bin before purge.
ISARD_RECYCLE_RETENTION_DAYS = env.int("ISARD_RECYCLE_RETENTION_DAYS", default=7)
# A domain no live desktop owns (a define given up on that finished late) is undefined by
# the reconciliation once seen so this long; files no row names are reported after it.
ISARD_ORPHAN_GRACE_SECONDS = env.int("ISARD_ORPHAN_GRACE_SECONDS", default=300)
# An upload of install media nobody sent a chunk to for this long fails (its file goes).
ISARD_MEDIA_UPLOAD_EXPIRY_HOURS = env.int("ISARD_MEDIA_UPLOAD_EXPIRY_HOURS", default=24)
# Folders of the server media may be registered from by path (besides the media pool);
# none by default: a path could otherwise name any file the platform can read.
ISARD_MEDIA_IMPORT_DIRS = [Path(p) for p in env.list("ISARD_MEDIA_IMPORT_DIRS", default=[])]
if any(not directory.is_absolute() for directory in ISARD_MEDIA_IMPORT_DIRS):
    raise ImproperlyConfigured("ISARD_MEDIA_IMPORT_DIRS must list absolute folders.")
# Viewers: a viewer token is single-use and lives this long; a .vv file's SPICE password too.
ISARD_VIEWER_TOKEN_SECONDS = env.int("ISARD_VIEWER_TOKEN_SECONDS", default=60)
ISARD_SPICE_TICKET_SECONDS = env.int("ISARD_SPICE_TICKET_SECONDS", default=120)
ISARD_VIEWER_TOKEN_RETENTION_SECONDS = env.int("ISARD_VIEWER_TOKEN_RETENTION_SECONDS", default=3600)
# Direct links (`/v/<token>/`, no sign-in): a new link lives ISARD_DIRECT_LINK_HOURS unless
# its maker chooses, at most ISARD_DIRECT_LINK_MAX_HOURS (30 days); wrong tokens from one
# address beyond ISARD_DIRECT_LINK_FAILURE_RATE are answered 429.
ISARD_DIRECT_LINK_HOURS = env.int("ISARD_DIRECT_LINK_HOURS", default=24)
ISARD_DIRECT_LINK_MAX_HOURS = env.int("ISARD_DIRECT_LINK_MAX_HOURS", default=720)
ISARD_DIRECT_LINK_FAILURE_RATE = env.str("ISARD_DIRECT_LINK_FAILURE_RATE", default="20/minute")
if not 1 <= ISARD_DIRECT_LINK_HOURS <= ISARD_DIRECT_LINK_MAX_HOURS:
    raise ImproperlyConfigured(
        "ISARD_DIRECT_LINK_HOURS must be between 1 and ISARD_DIRECT_LINK_MAX_HOURS."
    )
# The proxy's hop to a desktop's VNC: TLS whenever it leaves this machine ("auto"), or always.
ISARD_VIEWER_TLS = env.str("ISARD_VIEWER_TLS", default="auto")
# An RD Gateway that .rdp files go through to reach the guests' network (blank: direct).
ISARD_RDP_GATEWAY = env.str("ISARD_RDP_GATEWAY", default="")
# The platform's own CA and host certificate (HTTPS, wss, SPICE TLS); `isard_certs` rotates.
ISARD_PKI_DIR = Path(env.str("ISARD_PKI_DIR", default=str(VAR_DIR / "pki")))
# Names the host certificate is valid for, besides this machine's name and localhost.
ISARD_TLS_HOSTNAMES = env.list("ISARD_TLS_HOSTNAMES", default=[])
# Web tier (`manage.py isard_web`, the Procfile's `web:` line): plain HTTP on ISARD_BIND:
# ISARD_PORT (loopback by default), HTTPS and wss on ISARD_TLS_BIND:ISARD_TLS_PORT (0: off)
# with the platform's host certificate unless ISARD_TLS_CERT_FILE/KEY_FILE name others
# (PEM; the certificate file may carry intermediates after the server's). TLS ends in
# Daphne, which puts "https" in the ASGI scope, so `request.is_secure()` needs no proxy
# header. ISARD_WEB_WORKERS Daphne processes share the sockets (0: one per CPU).
ISARD_BIND = env.str("ISARD_BIND", default="127.0.0.1")
ISARD_PORT = env.int("ISARD_PORT", default=8000)
ISARD_TLS_BIND = env.str("ISARD_TLS_BIND", default=ISARD_BIND)
ISARD_TLS_PORT = env.int("ISARD_TLS_PORT", default=8443)
ISARD_TLS_CERT_FILE = env.str("ISARD_TLS_CERT_FILE", default="")
ISARD_TLS_KEY_FILE = env.str("ISARD_TLS_KEY_FILE", default="")
if bool(ISARD_TLS_CERT_FILE) != bool(ISARD_TLS_KEY_FILE):
    raise ImproperlyConfigured(
        "Set both ISARD_TLS_CERT_FILE and ISARD_TLS_KEY_FILE (or neither, for the platform's "
        "own certificate)."
    )
# The SPICE gateway (`manage.py isard_gateway`, the Procfile's `gateway:` line): an HTTP
# CONNECT proxy that remote-viewer, told by the .vv file's `proxy=` line, tunnels every
# SPICE channel through. With ISARD_GATEWAY_SHARED (the default) the web workers pass each
# CONNECT that arrives on the HTTPS port to it over the Unix socket ISARD_GATEWAY_SOCKET,
# so one public port serves HTTPS, wss and SPICE; ISARD_GATEWAY_PORT (0: none) opens a port
# of its own as well, e.g. behind a TLS-terminating proxy. The .vv names
# ISARD_PUBLIC_HOST:ISARD_PUBLIC_PORT (blank: the host name the file was downloaded from;
# 0: the HTTPS port when shared, else ISARD_GATEWAY_PORT). A .vv file's gateway credential
# lives ISARD_GATEWAY_CREDENTIAL_SECONDS; a tunnel with no byte either way for
# ISARD_GATEWAY_IDLE_SECONDS is closed.
ISARD_GATEWAY_SHARED = env.bool("ISARD_GATEWAY_SHARED", default=True)
ISARD_GATEWAY_SOCKET = Path(
    env.str("ISARD_GATEWAY_SOCKET", default=str(VAR_DIR / "run" / "gateway.sock"))
)
ISARD_GATEWAY_BIND = env.str("ISARD_GATEWAY_BIND", default=ISARD_TLS_BIND)
ISARD_GATEWAY_PORT = env.int("ISARD_GATEWAY_PORT", default=0)
ISARD_PUBLIC_HOST = env.str("ISARD_PUBLIC_HOST", default="")
ISARD_PUBLIC_PORT = env.int("ISARD_PUBLIC_PORT", default=0)
ISARD_GATEWAY_CREDENTIAL_SECONDS = env.int("ISARD_GATEWAY_CREDENTIAL_SECONDS", default=28800)
ISARD_GATEWAY_IDLE_SECONDS = env.int("ISARD_GATEWAY_IDLE_SECONDS", default=3600)
for _name, _port in (
    ("ISARD_GATEWAY_PORT", ISARD_GATEWAY_PORT),
    ("ISARD_PUBLIC_PORT", ISARD_PUBLIC_PORT),
):
    if not 0 <= _port <= 65535:
        raise ImproperlyConfigured(f"{_name} must be a port number (0: none).")
if len(str(ISARD_GATEWAY_SOCKET).encode()) > 107:
    raise ImproperlyConfigured(
        f"ISARD_GATEWAY_SOCKET is {len(str(ISARD_GATEWAY_SOCKET).encode())} bytes long: a "
        "Unix socket's path may have 107 at most; choose a shorter one."
    )
# HTTPS only (README, "Production"): plain HTTP redirected to ISARD_HTTPS_HOST (host[:port]
# of the HTTPS listener: Django would keep the plain request's port), cookies sent over
# HTTPS only, and HSTS. Each needs the HTTPS listener; without it they lock everyone out.
SECURE_SSL_REDIRECT = env.bool("ISARD_HTTPS_REDIRECT", default=False)
SECURE_SSL_HOST = env.str("ISARD_HTTPS_HOST", default="") or None
# A monitor on this machine asks the plain port; anonymous callers get the status only.
SECURE_REDIRECT_EXEMPT = [r"^health/$", r"^metrics$"]
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.bool("ISARD_SECURE_COOKIES", default=False)
SECURE_HSTS_SECONDS = env.int("ISARD_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("ISARD_HSTS_INCLUDE_SUBDOMAINS", default=True)
# The preload list takes registrable domains only (school.example, not vdi.school.example
# where the platform lives): a school opts in at its own apex, not from here.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
if SECURE_HSTS_SECONDS < 0:
    raise ImproperlyConfigured("ISARD_HSTS_SECONDS must be 0 (no HSTS) or more seconds.")
if not ISARD_TLS_PORT and (SECURE_SSL_REDIRECT or SESSION_COOKIE_SECURE or SECURE_HSTS_SECONDS):
    raise ImproperlyConfigured(
        "ISARD_HTTPS_REDIRECT, ISARD_SECURE_COOKIES and ISARD_HSTS_SECONDS need HTTPS, but "
        "ISARD_TLS_PORT is 0: set the HTTPS port, or turn them off."
    )
if SECURE_SSL_REDIRECT and not SECURE_SSL_HOST:
    raise ImproperlyConfigured(
        "ISARD_HTTPS_REDIRECT needs ISARD_HTTPS_HOST: the name (and port, unless 443) that "
        "browsers reach HTTPS at, e.g. vdi.school.example."
    )
# Who sees the health page's details besides administrators: a monitor sending
# "Authorization: Bearer <this>" (blank: nobody else). Anonymous callers get the status.
ISARD_HEALTH_TOKEN = env.str("ISARD_HEALTH_TOKEN", default="")
# Who may scrape /metrics: a client sending "Authorization: Bearer <ISARD_METRICS_TOKEN>"
# (blank: no token works), or one whose own address (the connection's, never a forwarded
# header) is in ISARD_METRICS_ALLOW (CIDRs; blank: none). Anyone else gets a 404.
ISARD_METRICS_TOKEN = env.str("ISARD_METRICS_TOKEN", default="")
ISARD_METRICS_ALLOW = [
    cidr.strip()
    for cidr in env.list("ISARD_METRICS_ALLOW", default=["127.0.0.0/8", "::1/128"])
    if cidr.strip()
]
for _cidr in ISARD_METRICS_ALLOW:
    try:
        ipaddress.ip_network(_cidr, strict=False)
    except ValueError as _error:
        raise ImproperlyConfigured(
            f"ISARD_METRICS_ALLOW: {_cidr!r} is not an address or network ({_error})."
        ) from None
ISARD_WEB_WORKERS = env.int("ISARD_WEB_WORKERS", default=0)
if ISARD_WEB_WORKERS < 0:
    raise ImproperlyConfigured("ISARD_WEB_WORKERS must be 0 (one per CPU) or more.")
ISARD_WEB_ACCESS_LOG = env.bool("ISARD_WEB_ACCESS_LOG", default=True)
# Fleet: where desktops run (most_free_memory, least_cpu_load, pack, round_robin; a course
# or desktop may override it in the admin), how long a start's memory is charged to its
# host, how long a silent host keeps its desktops, and how the rebalancer moves them.
ISARD_PLACEMENT_POLICY = env.str("ISARD_PLACEMENT_POLICY", default="most_free_memory")
ISARD_PLACEMENT_CHARGE_SECONDS = env.int("ISARD_PLACEMENT_CHARGE_SECONDS", default=30)
ISARD_HYPERVISOR_OFFLINE_GRACE_SECONDS = env.int(
    "ISARD_HYPERVISOR_OFFLINE_GRACE_SECONDS", default=30
)
ISARD_HYPERVISOR_SAMPLE_TIMEOUT_SECONDS = env.int(
    "ISARD_HYPERVISOR_SAMPLE_TIMEOUT_SECONDS", default=10
)
# Usage (the admin's usage page): a host's load is kept every this many seconds, for
# this many days; a usage report covers at most this many days.
ISARD_HOST_LOAD_SAMPLE_SECONDS = env.int("ISARD_HOST_LOAD_SAMPLE_SECONDS", default=300)
ISARD_HOST_LOAD_KEEP_DAYS = env.int("ISARD_HOST_LOAD_KEEP_DAYS", default=90)
ISARD_USAGE_MAX_DAYS = env.int("ISARD_USAGE_MAX_DAYS", default=400)
ISARD_DRAIN_POLICY = env.str("ISARD_DRAIN_POLICY", default="migrate_or_stop")
ISARD_REBALANCE_ENABLED = env.bool("ISARD_REBALANCE_ENABLED", default=True)
ISARD_REBALANCE_MAX_MOVES = env.int("ISARD_REBALANCE_MAX_MOVES", default=4)
ISARD_REBALANCE_THRESHOLD = env.float("ISARD_REBALANCE_THRESHOLD", default=0.25)
ISARD_MIGRATION_TIMEOUT_SECONDS = env.int("ISARD_MIGRATION_TIMEOUT_SECONDS", default=300)
# How long one libvirt call may take before its host counts as hung (a daemon stopped, not
# dead; a host whose network went away): the call fails with "did not answer in N s" and
# the worker is free again. Generous: starting a guest on a loaded host takes seconds.
ISARD_LIBVIRT_CALL_TIMEOUT_SECONDS = env.float("ISARD_LIBVIRT_CALL_TIMEOUT_SECONDS", default=60.0)
if ISARD_LIBVIRT_CALL_TIMEOUT_SECONDS <= 0:
    raise ImproperlyConfigured("ISARD_LIBVIRT_CALL_TIMEOUT_SECONDS must be more than 0 seconds.")
# How many disks and domains a worker makes at once when a class gets its desktops.
ISARD_PROVISION_CONCURRENCY = env.int("ISARD_PROVISION_CONCURRENCY", default=4)
# How long a graceful (ACPI) shutdown may take before the desktop is forced off.
ISARD_SHUTDOWN_TIMEOUT_SECONDS = env.int("ISARD_SHUTDOWN_TIMEOUT_SECONDS", default=90)

# The shared cache (Redis): the API's rate limits count here, so every Daphne process
# and every worker sees the same counts.
CACHES = {
    "default": {
        "BACKEND": "isard.core.cache.RedisCache",  # Django's, with its Redis clients reused
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "isard",
        "TIMEOUT": 300,
        # A hung Redis must not hang every API request (the rate limits count here); one
        # pool per process, not per thread: Daphne runs each request in a new thread.
        "OPTIONS": {
            "socket_timeout": ISARD_BROKER_SOCKET_TIMEOUT_SECONDS,
            "socket_connect_timeout": ISARD_BROKER_SOCKET_TIMEOUT_SECONDS,
            "pool_class": "isard.core.cache.SharedConnectionPool",
        },
    },
}

# REST API v1 (/api/v1/): session auth for the browser, bearer tokens for other clients.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # First, so that a request without credentials gets 401 with WWW-Authenticate.
        "accounts.api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "EXCEPTION_HANDLER": "isard.core.api.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "isard.core.api.schema.IsardAutoSchema",
    "DEFAULT_PAGINATION_CLASS": "isard.core.api.pagination.PageNumberPagination",
    "DEFAULT_FILTER_BACKENDS": [
        "isard.core.api.filters.FilterBackend",
        "rest_framework.filters.OrderingFilter",
        "isard.core.api.filters.SearchFilter",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["isard.core.api.throttling.UserRateThrottle"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
# Requests allowed per client and period ("N/second|minute|hour|day"), by scope: `login`
# per client address, `desktop_action` (start, stop, create...) and `user` (everything)
# per person.
ISARD_API_THROTTLE_RATES = {
    # Every API sign-in per address, right or wrong: a ceiling against floods, sized for a
    # school's morning behind one address (480 in 5 minutes, most in the first). Failures
    # are limited much lower, per username and per address (ISARD_SIGNIN_*).
    "login": env.str("ISARD_API_LOGIN_RATE", default="300/minute"),
    "desktop_action": env.str("ISARD_API_DESKTOP_ACTION_RATE", default="60/minute"),
    "user": env.str("ISARD_API_USER_RATE", default="1200/minute"),
}
# The pages (accounts.rate_limits) count failures only: failed sign-ins per username, and
# per client address (a whole school may sign in from one NAT address, hence more); wrong
# course codes per signed-in person, and per address with the address rate.
ISARD_SIGNIN_RATE = env.str("ISARD_SIGNIN_RATE", default="10/minute")
ISARD_SIGNIN_ADDRESS_RATE = env.str("ISARD_SIGNIN_ADDRESS_RATE", default="60/minute")
ISARD_ENROLMENT_CODE_RATE = env.str("ISARD_ENROLMENT_CODE_RATE", default="10/minute")
for _name, _rate in [
    *(
        (f"ISARD_API_{_scope.upper()}_RATE", _rate)
        for _scope, _rate in ISARD_API_THROTTLE_RATES.items()
    ),
    ("ISARD_SIGNIN_RATE", ISARD_SIGNIN_RATE),
    ("ISARD_SIGNIN_ADDRESS_RATE", ISARD_SIGNIN_ADDRESS_RATE),
    ("ISARD_ENROLMENT_CODE_RATE", ISARD_ENROLMENT_CODE_RATE),
    ("ISARD_DIRECT_LINK_FAILURE_RATE", ISARD_DIRECT_LINK_FAILURE_RATE),
]:
    # DRF would only fail at the first request; a wrong rate stops the start instead.
    if not re.fullmatch(r"[0-9]+/(s|sec|second|m|min|minute|h|hour|d|day)s?", _rate):
        raise ImproperlyConfigured(
            f"{_name}={_rate!r} is not a rate: write it as "
            "N/second, N/minute, N/hour or N/day, e.g. 10/minute."
        )
# API tokens expire after this many days (0: never).
ISARD_API_TOKEN_DAYS = env.int("ISARD_API_TOKEN_DAYS", default=90)
if ISARD_API_TOKEN_DAYS < 0:
    raise ImproperlyConfigured("ISARD_API_TOKEN_DAYS must be 0 (never expire) or more days.")

SPECTACULAR_SETTINGS = {
    "TITLE": "isard API",
    "DESCRIPTION": (
        "Virtual desktops for schools. Sign in with `POST /api/v1/auth/login/` to get a "
        "token and send it as `Authorization: Bearer <token>`; the browser uses its "
        'session. Every error is `{"message": ..., "extra": {...}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "isard.core.api.schema.add_created_links",
    ],
    "ENUM_NAME_OVERRIDES": {
        "DesktopStatusEnum": "desktops.choices.DesktopStatus",
        "TemplateStatusEnum": "templates_app.choices.TemplateStatus",
        "RoleEnum": "accounts.choices.Role",
        "CourseRoleEnum": "accounts.choices.CourseRole",
        "DrainPolicyEnum": "hypervisors.choices.DrainPolicy",
    },
    # Documentation pages served by the platform itself (drf-spectacular-sidecar): no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Every line plain text (control characters escaped: a name cannot forge a log line or
# send escape sequences to the terminal that reads the log) or, with ISARD_LOG_FORMAT=json,
# one JSON object per line for a log collector (isard.core.logs). Every event row of a
# desktop, template, media or host is a line of `isard.events` too (isard.core.events).
ISARD_LOG_FORMAT = env.str("ISARD_LOG_FORMAT", default="plain")
if ISARD_LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"ISARD_LOG_FORMAT={ISARD_LOG_FORMAT!r}: plain or json.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "()": "isard.core.logs.EscapingFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
        },
        "json": {"()": "isard.core.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": ISARD_LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env.str("ISARD_LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# LDAP login and group sync (django-auth-ldap); off unless ISARD_LDAP_SERVER_URI is set.
from isard.settings_ldap import *  # noqa: E402, F403
