"""Which release this process runs, for the health check and the page footer."""
import os

from django.conf import settings


def current_release():
    """The id in the release's REVISION file (written by dp), else $DP_RELEASE, else "dev".

    BASE_DIR is the resolved release directory of the code this process imported, so
    the answer names the code that is really running, not where `current` points now:
    that is what lets a health check expecting "ok <release>" tell old workers from new.
    """
    try:
        revision = (settings.BASE_DIR / "REVISION").read_text(encoding="utf-8").strip()
    except OSError:
        revision = ""
    return revision or os.environ.get("DP_RELEASE", "").strip() or "dev"


RELEASE = current_release()
