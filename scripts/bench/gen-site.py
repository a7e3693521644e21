#!/usr/bin/env python3
"""Writes a deterministic Django-like site for benchmarks.

    gen-site.py DIR [--files 3000] [--change N --seed S]

About 3000 files and 40 MB: apps with models/views/templates/migrations, a static tree of
CSS/JS/images with a few MB-sized files, and vendored packages. With --change N, rewrites
N existing small files (chosen by the seed) so a redeploy has exactly N changed files.
"""
import argparse
import os
import random


def text(rng, size):
    words = ["def", "class", "return", "self", "request", "models", "import", "from",
             "context", "render", "template", "queryset", "user", "field", "value"]
    out, n = [], 0
    while n < size:
        w = rng.choice(words) + rng.choice([" ", " ", "\n", "(", ")", ".", "_"]) + str(rng.randrange(1000))
        out.append(w)
        n += len(w)
    return "".join(out)[:size]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--change", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    small = []
    rng = random.Random(42)
    apps = ["accounts", "blog", "shop", "search", "api", "payments", "cms", "forum"]
    n = 0
    big_files = [("static/video/intro.bin", 10 << 20), ("static/img/hero.bin", 3 << 20),
                 ("static/js/vendor.bundle.js", 2 << 20), ("static/fonts/icons.bin", 1 << 20),
                 ("static/css/all.css", 1 << 20)]
    for path, size in big_files:
        small.append(None)
        full = os.path.join(a.dir, path)
        if not a.change:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(random.Random(path).randbytes(size))
        n += 1
    kinds = [("{app}/models{i}.py", 11000), ("{app}/views{i}.py", 9000), ("{app}/templates/{app}/page{i}.html", 6000),
             ("{app}/migrations/{i:04d}_auto.py", 2500), ("static/{app}/js/m{i}.js", 9000),
             ("static/{app}/css/s{i}.css", 5000), ("vendor/lib{lib}/mod{i}.py", 12000),
             ("locale/{app}/LC_MESSAGES/django{i}.po", 4000)]
    i = 0
    while n < a.files:
        app = apps[i % len(apps)]
        pattern, size = kinds[i % len(kinds)]
        path = pattern.format(app=app, i=i, lib=i % 40)
        small.append(path)
        if not a.change:
            full = os.path.join(a.dir, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w") as f:
                f.write(text(rng, rng.randrange(size // 2, size * 3 // 2)))
        n += 1
        i += 1
    if a.change:
        pick = random.Random(a.seed)
        for path in pick.sample([p for p in small if p], a.change):
            with open(os.path.join(a.dir, path), "a") as f:
                f.write("\n# changed %d\n" % a.seed)
    else:
        with open(os.path.join(a.dir, "manage.py"), "w") as f:
            f.write("#!/usr/bin/env python3\nimport sys\n")
        os.chmod(os.path.join(a.dir, "manage.py"), 0o755)


if __name__ == "__main__":
    main()
