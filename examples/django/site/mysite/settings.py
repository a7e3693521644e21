"""Settings for mysite, read from the environment.

Every value that differs between a laptop and a server comes from an environment
variable. On a host the variables live in `<root>/shared/.env`, which dp links into
every release as `.env` (`shared = [".env"]` in deploy.toml), so a deploy never
overwrites them. A variable already set in the process environment wins over `.env`.

    SECRET_KEY     required unless DEBUG is on
    DEBUG          "1", "true", "yes" or "on" turn it on (default: off)
    DATABASE_URL   sqlite:////abs/path/db.sqlite3 or postgres://user:pass@host:5432/name
                   (default: sqlite, db.sqlite3 next to manage.py)
    ALLOWED_HOSTS  comma-separated host names, added to 127.0.0.1 and localhost
    HTTPS          on behind a TLS-terminating proxy: secure cookies (default: off)
"""

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

# The release directory. resolve() follows the `current` symlink, so a process keeps
# pointing at the release whose code it imported, even after `current` moves on.
BASE_DIR = Path(__file__).resolve().parent.parent


def load_env_file(path):
    """Sets KEY=VALUE lines of `path` in os.environ, without overriding what is set.

    Blank lines and lines starting with # are skipped, an `export ` prefix is allowed,
    and one pair of matching quotes around the value is removed. This is the subset that
    systemd's EnvironmentFile= reads the same way, so one file serves both.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.replace("_", "").isalnum():
            raise ImproperlyConfigured(f"{path}:{number}: expected KEY=VALUE")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        os.environ.setdefault(key, value)


def env_bool(name, default=False):
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def parse_database_url(url):
    """Turns a DATABASE_URL into a Django DATABASES entry (sqlite and postgres only)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        # sqlite:////abs/path -> /abs/path; sqlite:///rel/path -> BASE_DIR/rel/path;
        # sqlite:// or sqlite://:memory: -> an in-memory database.
        if parts.netloc == ":memory:" or (not parts.netloc and parts.path in ("", "/")):
            name = ":memory:"
        else:
            path = unquote(parts.netloc + parts.path)
            path = path[1:] if path.startswith("/") else path
            name = str(BASE_DIR / path) if not path.startswith("/") else path
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": name}
    if scheme in ("postgres", "postgresql", "pgsql"):
        # The driver (psycopg) is not in requirements.txt: add it when you use this.
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": unquote(parts.hostname or ""),
            "PORT": str(parts.port or ""),
            # ?sslmode=require&connect_timeout=5 -> passed to the driver as they are.
            "OPTIONS": dict(parse_qsl(parts.query)),
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
        }
    raise ImproperlyConfigured(f"DATABASE_URL: unsupported scheme {parts.scheme!r}")


load_env_file(BASE_DIR / ".env")

DEBUG = env_bool("DEBUG")

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            f"SECRET_KEY is not set: put SECRET_KEY=... in {BASE_DIR / '.env'} "
            "(on a host: <root>/shared/.env), or set DEBUG=1 for local development"
        )
    SECRET_KEY = "django-insecure-local-development-only"

ALLOWED_HOSTS = ["127.0.0.1", "localhost"] + [
    h.strip() for h in os.environ.get("ALLOWED_HOSTS", "").split(",") if h.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "notes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mysite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

WSGI_APPLICATION = "mysite.wsgi.application"

DATABASES = {
    "default": parse_database_url(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
    )
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# `[build] command` runs collectstatic in each new release: the files land in the
# release itself, so every release serves exactly its own assets. Point the web
# server's /static/ at <root>/current/staticfiles/ (gunicorn does not serve them).
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# HTTPS=1 when a TLS-terminating proxy (nginx) in front sets X-Forwarded-Proto: cookies
# become secure-only and request.is_secure() trusts the header.
if env_bool("HTTPS"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
