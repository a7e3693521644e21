from django.db import connection
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from .models import Note
from .release import RELEASE


@require_http_methods(["GET", "POST"])
def index(request):
    if request.method == "POST":
        text = request.POST.get("text", "").strip()[:200]
        if text:
            Note.objects.create(text=text)
        return redirect("index")
    context = {
        "notes": Note.objects.all()[:20],
        "count": Note.objects.count(),
        "release": RELEASE,
    }
    return render(request, "notes/index.html", context)


@never_cache
def healthz(request):
    """`ok <release>` once the database answers; 503 otherwise.

    dp's health check (health_expect = "ok {release}") passes only when the body names
    the release being deployed, so a worker still running the previous code fails it.
    """
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any database error makes the host unhealthy
        return HttpResponse(
            f"database error: {type(exc).__name__}\n", status=503, content_type="text/plain"
        )
    return HttpResponse(f"ok {RELEASE}\n", content_type="text/plain")
